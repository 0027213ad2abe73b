"""GPT-2 and TransformerLens's other named models, the right way for the installed major.

* TransformerLens 3.x: ``HookedTransformer.from_pretrained(name)`` (LayerNorm folded, weights
  centred).
* TransformerLens 4.x: ``TransformerBridge.boot_transformers(name)`` followed by
  ``enable_compatibility_mode()``, so weights and activations match the 3.x model.

Weights come from the Hugging Face hub or its local cache. :func:`load_model` checks the cache
first (nothing is fetched when the files are there); when they are not and the hub cannot be
reached (``HF_HUB_OFFLINE=1``, no network) it raises one :class:`HubUnavailableError` within a
second or two, saying what to set and what to run, instead of retrying.

:func:`gpt2_like` builds a small GPT-2-architecture model offline (random weights, a local
Hugging Face ``GPT2LMHeadModel``) and loads it through the same TransformerLens path as real
GPT-2, for tests and offline tutorials. :func:`compare_induction_heads` puts the head scores of
several models side by side.

Example:
    >>> model = gpt2_like(n_layers=2, n_heads=2, d_model=32)
    >>> model.cfg.n_layers, model.cfg.n_heads
    (2, 2)
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pandas as pd
import torch

from tlassoc._tl import TL_MAJOR, TL_VERSION
from tlassoc.model import CheckpointError

if TYPE_CHECKING:
    from tlassoc.heads.adapter import Model

__all__ = [
    "GPT2_INDUCTION_HEADS",
    "GPT2_PREVIOUS_TOKEN_HEADS",
    "PICKLED_REPO_OWNERS",
    "HubUnavailableError",
    "compare_induction_heads",
    "gpt2_like",
    "hub_reachable",
    "load_model",
    "official_name",
]

#: GPT-2 small's induction heads (layer, head) as reported by published third-party runs.
GPT2_INDUCTION_HEADS: tuple[tuple[int, int], ...] = ((5, 1), (5, 5), (6, 9), (7, 2), (7, 10))
#: GPT-2 small's previous-token heads: 4.11 (nearly exact) and 2.2 (weaker).
GPT2_PREVIOUS_TOKEN_HEADS: tuple[tuple[int, int], ...] = ((4, 11), (2, 2))

_TRUE = {"1", "true", "yes", "on"}


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub cannot be reached and the model is not in the local cache."""


def official_name(name: str) -> str:
    """The Hugging Face repository TransformerLens loads for ``name`` (aliases resolved).

    Example:
        >>> official_name("GPT2").lower().endswith("gpt2")
        True
    """
    try:
        if TL_MAJOR >= 4:
            from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES
        else:
            from transformer_lens.loading_from_pretrained import (  # type: ignore[no-redef]
                MODEL_ALIASES,
                OFFICIAL_MODEL_NAMES,
            )
    except ImportError:  # pragma: no cover - layout differs in some releases
        return name
    lowered = name.lower()
    for official in OFFICIAL_MODEL_NAMES:
        if official.lower() == lowered:
            return official
        if lowered in (a.lower() for a in MODEL_ALIASES.get(official, [])):
            return official
    return name


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection within ``timeout`` seconds.

    One attempt, name resolution included, bounded by ``timeout`` (run in a daemon thread, so a
    hanging DNS lookup cannot stall the caller). ``False`` at once when ``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE`` is set.

    Example:
        >>> isinstance(hub_reachable(0.5), bool)
        True
    """
    if _offline_env():
        return False
    url = urlparse(_endpoint())
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme != "http" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _cached_snapshot(repo: str, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """The local snapshot folder of ``repo`` if its config and weights are cached."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json", cache_dir=cache_dir)
    if not isinstance(config, str):
        return None
    folder = Path(config).parent
    if any((folder / w).exists() for w in ("model.safetensors", "model.safetensors.index.json")):
        return folder
    if (folder / "pytorch_model.bin").exists():
        raise CheckpointError(
            f"{folder / 'pytorch_model.bin'} is the only cached weights file of {repo!r}, and "
            "it is a pickle, which tlassoc never loads; expected model.safetensors (delete the "
            "cached snapshot and load again with network access to fetch it)"
        )
    return None


#: Owners of TransformerLens-format repositories whose weights are pickled ``.pth`` files.
#: TransformerLens 3.x reads them with ``torch.load(weights_only=False)``, which runs any code a
#: file carries, so :func:`load_model` refuses them there (4.x reads them with torch's
#: weights-only unpickler).
PICKLED_REPO_OWNERS = ("NeelNanda/", "ArthurConmy/", "Baidicoot/")


def _refuse_pickled(name: str, repo: str) -> None:
    if TL_MAJOR < 4 and repo.startswith(PICKLED_REPO_OWNERS):
        raise CheckpointError(
            f"{name!r} ({repo}) is stored as a pickled .pth file, which TransformerLens "
            f"{TL_VERSION} loads with torch.load(weights_only=False) and which could run code "
            "from the file; tlassoc never unpickles: expected a model with safetensors weights "
            "(e.g. 'gpt2'), or TransformerLens 4.x for this one"
        )


def _cache_location(cache_dir: str | os.PathLike[str] | None) -> str:
    """The cache folder, with the home folder written ``~`` (shorter, and the same text on
    every machine, e.g. in a notebook's stored output)."""
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = constants.HF_HUB_CACHE
    path = os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    home = os.path.expanduser("~")
    if home not in ("", "/", "~") and (path == home or path.startswith(home + os.sep)):
        return "~" + path[len(home) :]
    return path


def _offline_vars() -> list[str]:
    return [
        v
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        if os.environ.get(v, "").strip().lower() in _TRUE
    ]


def _unavailable(name: str, repo: str, cache_dir: Any, reason: str) -> HubUnavailableError:
    """The offline error: what is missing and the ways to get the model (the advice to unset
    the offline switches only when one is set)."""
    set_vars = _offline_vars()
    unset = f"; or unset {' and '.join(set_vars)} where the hub is reachable" if set_vars else ""
    return HubUnavailableError(
        f"cannot load {name!r} ({repo}): {reason}, and it is not in the local Hugging Face cache "
        f"({_cache_location(cache_dir)}). Ways to get it: pass the folder of its downloaded "
        "Hugging Face files (config.json, *.safetensors and the tokenizer files, e.g. copied "
        f"from a machine with network access) as the name: load_model('/path/to/{name}'); or "
        "run once with network access to fill the cache, e.g. "
        f"`python -c \"import tlassoc.pretrained as p; p.load_model('{name}')\"` (set HF_HOME to "
        f"choose where the cache lives), then work offline with HF_HUB_OFFLINE=1{unset}. "
        "Offline, tlassoc.pretrained.gpt2_like() builds a small GPT-2-architecture model locally."
    )


def _local_folder(name: Any) -> Path | None:
    """The folder ``name`` names when it is an existing directory (a folder of downloaded
    Hugging Face files), else ``None`` (a hub name)."""
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"name={name!r}; expected a model name or a folder path")
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if str(name).startswith(("/", "./", "../", "~")):
            raise ValueError(f"name={str(name)!r} is not a folder; expected a folder of weights")
        return None
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"name={str(name)!r} is a folder without config.json; expected a folder of a model's "
            "Hugging Face files (config.json, *.safetensors, tokenizer files)"
        )
    return folder


def _causal_lm(folder: Path, dtype: torch.dtype) -> Any:
    """A transformers causal LM from local files: safetensors only, no network, eager attention
    (so that attention patterns can be read)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        folder,
        torch_dtype=dtype,
        attn_implementation="eager",
        local_files_only=True,
        use_safetensors=True,
    )


def _from_folder(folder: Path, device: Any, dtype: torch.dtype) -> Any:
    """Load a folder of Hugging Face files (safetensors weights only) without any network."""
    from transformers import AutoTokenizer

    weights = ("model.safetensors", "model.safetensors.index.json")
    if not any((folder / w).is_file() for w in weights):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        found = (
            f" (it holds {', '.join(sorted(pickled))}: pickles, never loaded)" if pickled else ""
        )
        raise CheckpointError(
            f"{folder} has no model.safetensors{found}; expected safetensors weights"
        )
    hf_model = _causal_lm(folder, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{folder} has no usable tokenizer files ({type(err).__name__}); expected those "
            "of the model (e.g. tokenizer.json, or vocab.json + merges.txt)"
        ) from None
    return _wrap_hf(hf_model.eval(), tokenizer, f"local-{folder.name}", device, dtype)


def load_model(
    name: str = "gpt2",
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
    probe_timeout: float = 1.0,
) -> Any:
    """Load a TransformerLens named model (default GPT-2 small), in eval mode.

    Order: a local folder when ``name`` is one; the local cache (used without touching the
    network); then the hub if it answers within ``probe_timeout`` seconds, else
    :class:`HubUnavailableError` (raised in well under 2 seconds, no retries).

    Args:
        name: A TransformerLens model name or alias (``"gpt2"``, ``"gpt2-medium"``,
            ``"attn-only-2l"``, ...), or the path of a folder holding a model's downloaded
            Hugging Face files (``config.json``, ``model.safetensors`` and the tokenizer files;
            loaded with no network, pickled weights refused).
        device: Where to put the model.
        dtype: Parameter dtype.
        cache_dir: Hugging Face cache folder (default: HF's, under ``HF_HOME``).
        probe_timeout: Seconds to wait for the hub before giving up.

    Returns:
        ``HookedTransformer`` (3.x) or ``TransformerBridge`` in compatibility mode (4.x).

    Raises:
        HubUnavailableError: not cached and the hub is unreachable or disabled.
        CheckpointError: the weights would have to be unpickled (a cached snapshot holding only
            ``pytorch_model.bin``; on TransformerLens 3.x, the pickled ``.pth`` repositories of
            :data:`PICKLED_REPO_OWNERS`). Nothing is loaded.

    Example:
        >>> model = load_model("gpt2")  # doctest: +SKIP
    """
    local = _local_folder(name)
    if local is not None:
        return _from_folder(local, device, dtype)
    repo = official_name(name)
    _refuse_pickled(name, repo)
    snapshot = _cached_snapshot(repo, cache_dir)
    if snapshot is None:
        if _offline_env():
            raise _unavailable(name, repo, cache_dir, f"{' and '.join(_offline_vars())} set")
        if not hub_reachable(probe_timeout):
            raise _unavailable(
                name,
                repo,
                cache_dir,
                f"the hub ({_endpoint()}) did not answer within {probe_timeout} s",
            )
        return _from_hub(name, device, dtype, cache_dir)
    return _from_snapshot(name, repo, snapshot, device, dtype, cache_dir)


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def _from_hub(name: str, device: Any, dtype: torch.dtype, cache_dir: Any) -> Any:
    with _quiet():
        if TL_MAJOR >= 4:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(name, device=device, dtype=dtype)
            model.enable_compatibility_mode()
        else:
            from transformer_lens import HookedTransformer

            kwargs = {"cache_dir": str(cache_dir)} if cache_dir is not None else {}
            model = HookedTransformer.from_pretrained(name, device=device, dtype=dtype, **kwargs)
    return model.eval()


def _from_snapshot(
    name: str, repo: str, snapshot: Path, device: Any, dtype: torch.dtype, cache_dir: Any
) -> Any:
    """Load from the cached snapshot without any network access."""
    from transformers import AutoTokenizer

    try:
        hf_model = _causal_lm(snapshot, dtype)
    except (ValueError, OSError, KeyError):
        # Not a transformers checkpoint (e.g. TransformerLens's own toy models): let
        # TransformerLens read its cache.
        return _from_hub(name, device, dtype, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(snapshot, local_files_only=True)
    return _wrap_hf(hf_model.eval(), tokenizer, repo, device, dtype)


def _wrap_hf(hf_model: Any, tokenizer: Any, model_name: str, device: Any, dtype: Any) -> Any:
    """Hand an in-memory HF causal LM to TransformerLens's own loader for the installed major."""
    hf_model = hf_model.to(device)
    with _quiet():
        if TL_MAJOR >= 4:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(
                model_name, hf_model=hf_model, tokenizer=tokenizer, device=device, dtype=dtype
            )
            model.enable_compatibility_mode()
        else:
            from transformer_lens import HookedTransformer
            from transformer_lens import loading_from_pretrained as loading

            with tempfile.TemporaryDirectory() as folder:
                # TransformerLens 3.x reads the HF config of a local folder without the hub
                hf_model.config.save_pretrained(folder)
                cfg = loading.get_pretrained_model_config(
                    folder,
                    hf_cfg=hf_model.config.to_dict(),
                    fold_ln=True,
                    device=device,
                    dtype=dtype,
                )
                state = loading.get_pretrained_state_dict(folder, cfg, hf_model, dtype=dtype)
            cfg.model_name = model_name.split("/")[-1]
            model = HookedTransformer(cfg, tokenizer, move_to_device=False)
            model.load_and_process_state_dict(
                state,
                fold_ln=True,
                center_writing_weights=True,
                center_unembed=True,
                fold_value_biases=True,
            )
            model.move_model_modules_to_device()
    return model.eval()


def gpt2_like(
    n_layers: int = 2,
    n_heads: int = 4,
    d_model: int = 64,
    n_ctx: int = 256,
    *,
    seed: int = 0,
    tokenizer: Any = None,
    device: str | torch.device = "cpu",
    hf_model: Any = None,
) -> Any:
    """A small GPT-2-architecture model built offline, loaded like real GPT-2.

    Builds ``transformers.GPT2LMHeadModel(GPT2Config(...))`` with seeded random weights (or takes
    ``hf_model``) and passes it through the same TransformerLens loader as :func:`load_model`
    (3.x: ``HookedTransformer`` GPT-2 conversion + weight processing; 4.x: ``TransformerBridge``
    with the GPT-2 adapter, compatibility mode). The vocabulary is the tokenizer's (default:
    Tiny Shakespeare characters, 65 tokens, no BOS). No weights are downloaded or shipped.

    Example:
        >>> model = gpt2_like(n_layers=1, n_heads=2, d_model=16)
        >>> model(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 65])
    """
    if hf_model is None:
        from transformers import GPT2Config, GPT2LMHeadModel

        from tlassoc.tokenizer import CharTokenizer

        tokenizer = tokenizer or CharTokenizer.tiny_shakespeare().to_hf()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        special = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        config = GPT2Config(
            n_layer=n_layers,
            n_head=n_heads,
            n_embd=d_model,
            n_positions=n_ctx,
            n_ctx=n_ctx,
            vocab_size=len(tokenizer),
            bos_token_id=special,
            eos_token_id=special,
            architectures=["GPT2LMHeadModel"],
            attn_implementation="eager",
        )
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            hf_model = GPT2LMHeadModel(config)
        finally:
            torch.random.set_rng_state(state)
    elif tokenizer is None:
        raise ValueError("pass the tokenizer that belongs to hf_model")
    return _wrap_hf(hf_model.eval(), tokenizer, f"gpt2-like-{n_layers}l", device, torch.float32)


def compare_induction_heads(
    models: Mapping[str, Model | str],
    *,
    repeat_len: int = 50,
    n_samples: int = 10,
    seed: int = 0,
) -> tuple[pd.DataFrame, Any]:
    """Induction and previous-token scores of several models' heads, side by side.

    Args:
        models: ``{label: model or name}``; tlassoc models, GPT-2 or any TransformerLens model,
            or a name (or folder of downloaded files) that :func:`load_model` accepts.
        repeat_len: Block length of the stripe score (capped at the vocabulary size).
        n_samples: Sequences per score.
        seed: Seed of the random tokens.

    Returns:
        ``(table, figure)``: one row per head of every model (``model, layer, head, head_name,
        induction, previous_token``), and a matplotlib figure with one heatmap per model and
        score.

    Example:
        >>> from tlassoc import AssocTransformer, presets
        >>> table, fig = compare_induction_heads({"rpe": AssocTransformer(presets.rpe(d_model=16))})
        >>> sorted(set(table["model"]))
        ['rpe']
    """
    from tlassoc.heads import (
        induction_scores,
        previous_token_scores,
        random_block_tokens,
        scores_frame,
    )
    from tlassoc.heads.patterns import token_pool_size
    from tlassoc.viz.heads import plot_model_comparison

    frames = []
    for label, model in models.items():
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        pool = token_pool_size(model)
        L = min(repeat_len, pool, (model.cfg.n_ctx - 1) // 2)
        ind = induction_scores(model, repeat_len=L, n_samples=n_samples, seed=seed)
        tokens, _ = random_block_tokens(
            model, min(64, pool, model.cfg.n_ctx - 1), 1, n_samples, seed=seed + 1
        )
        prev = previous_token_scores(model, tokens)
        frames.append(scores_frame({"induction": ind, "previous_token": prev}, label))
    table = pd.concat(frames, ignore_index=True)
    return table, plot_model_comparison(table, ["induction", "previous_token"])
