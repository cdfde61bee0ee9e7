"""What the CLI says about a known failure: one paragraph naming the input, then the fix.

`explain(err)` maps the known failures of transformers, Lightning, torch, datasets and the OS
(the rules in `RULES`, each a function of one exception) to that paragraph, and returns None for
anything else (a bug, which keeps its traceback). `cli_exit(err)` prints that paragraph, or one
line naming the log for an unknown error, and returns the exit code. A pickle's message is never
passed on: it would suggest loading it unsafely.
"""

from __future__ import annotations

import errno
import linecache
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

from infodyn.errors import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_USER,
    ConfigError,
    TrainingDivergedError,
)
from infodyn.model_folder import model_folder, unsafe_pickle
from infodyn.tracebacks import (
    chain,
    disk_free,
    file_on_path,
    frame,
    frames,
    in_package,
    paragraph,
    path_of,
    short,
)

log = logging.getLogger("infodyn")


def explain(err: BaseException) -> str | None:
    """One paragraph naming the input and the fix for a known failure; None for an unknown one."""
    causes = list(chain(err))
    for e in causes:  # first: a pickle's message must never reach the user (it suggests unsafe)
        text = unsafe_pickle(e)
        if text:
            return paragraph(text)
    if isinstance(err, TrainingDivergedError | ConfigError):
        return paragraph(str(err))
    for e in causes:
        for rule in RULES:
            text = rule(e)
            if text:
                return paragraph(text)
    return None


def _peft_targets(err: BaseException) -> str | None:
    """LoRA's `target_modules` name no module of the model (peft finds out when wrapping it)."""
    if type(err).__name__ != "NoMatchingPeftModuleError" and not (
        isinstance(err, ValueError) and "Target modules" in str(err) and in_package(err, "peft")
    ):
        return None
    return (
        f"finetune.target_modules names no module of this model ({short(err, 200)}). Fix: "
        "finetune.target_modules=null (the defaults for the architecture), or names of the "
        "model's linear layers such as [query,value] (BERT/RoBERTa) or [q_proj,v_proj] (Llama)."
    )


# -- Lightning ---------------------------------------------------------------------------------
def _trainer_init(err: BaseException) -> FrameType | None:
    return frame(err, "__init__", "pytorch_lightning/trainer/trainer.py")


def _lightning(err: BaseException) -> str | None:
    init = _trainer_init(err)
    misconfig = type(err).__name__ == "MisconfigurationException"
    if not misconfig and not (init and isinstance(err, ValueError | TypeError | ImportError)):
        return None
    msg = re.sub(r"`?Trainer\((\w+)=([^)]*)\)`?", r"trainer.\1=\2", short(err, 400))
    given = init.f_locals if init else {}
    acc = given.get("accelerator", "auto")
    unavailable = ("is not available", "No supported gpu backend", "torch_xla")
    if any(s in str(err) for s in unavailable):
        found = re.search(r"\[([^\]]*)\]", str(err))
        can = f" (Lightning can use: {found.group(1)})" if found else ""
        return (
            f"trainer.accelerator={acc} is not available on this machine{can}. Fix: "
            "trainer.accelerator=auto (uses what the machine has) or trainer=cpu; run on a "
            f"machine with a {acc} device to use it."
        )
    if "devices" in str(err):
        return (
            f"trainer.devices={given.get('devices', '?')} is not valid with "
            f"trainer.accelerator={acc}: {msg}. Fix: trainer.devices=1 (or a positive count, a "
            "list of device ids, or auto)."
        )
    where = "the trainer settings" if init else "the run"
    return (
        f"Lightning refused {where}: {msg}. Fix: correct the trainer.* value it names (the "
        "defaults are in conf/trainer/default.yaml), or start from trainer=default or trainer=cpu."
    )


# -- the OS: permissions, full disks, files where folders belong --------------------------------
OUTPUT_FIX = (
    "send the outputs elsewhere with run_dir=<folder> (or hydra.run.dir=..., "
    "paths.output_root=..., INFODYN_CACHE=... for the data cache)"
)


def _os(err: BaseException) -> str | None:
    if not isinstance(err, OSError):
        return None
    path = path_of(err)
    code = err.errno
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "the file system is read-only" if code == errno.EROFS else "permission denied"
        return (
            f"cannot write or read '{path or '?'}': {what}. Fix: {OUTPUT_FIX}, to a folder "
            "this user may write, or fix that folder's permissions (data and model folders "
            "only need to be readable)."
        )
    if code in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"no space (or quota) left on the disk that holds '{path or os.getcwd()}' "
            f"({disk_free(path)} free). Fix: free space there, or {OUTPUT_FIX}, on a bigger "
            "disk; a rerun resumes from the last finished epoch or stage."
        )
    if code in (errno.ENOTDIR, errno.EEXIST) and path:
        blocker = file_on_path(path)
        if blocker is not None:
            return (
                f"'{blocker}' is a file where infodyn needs a folder (the run dir or one "
                f"inside it). Fix: remove or rename that file, or {OUTPUT_FIX}."
            )
    if code == errno.EISDIR and path:
        return (
            f"'{path}' is a folder where infodyn needs a file. Fix: remove or rename that "
            f"folder, or {OUTPUT_FIX}."
        )
    return None


def _failed_write(err: BaseException) -> str | None:
    """torch.save's C++ writer reports a full disk without an errno."""
    text = str(err)
    if not isinstance(err, RuntimeError) or not (
        "unexpected pos" in text or "file write failed" in text or "basic_ios::clear" in text
    ):
        return None
    path = path_of(err)
    return (
        f"writing '{path or 'a checkpoint'}' failed part-way ({short(err, 120)}); most likely "
        f"the disk is full ({disk_free(path)} free). Fix: free space there, or {OUTPUT_FIX}; "
        "a rerun resumes from the last finished epoch or stage."
    )


# -- corrupt files -----------------------------------------------------------------------------
def _corrupt_file(err: BaseException) -> str | None:
    load = frame(err, "load", "torch/serialization.py")
    lightning = frame(err, "_load_from_checkpoint", "pytorch_lightning/core/saving.py")
    if load is not None and isinstance(err, Exception):  # whatever the unpickler tripped on
        path = path_of(err)
        what = short(err, 160) if str(err) else type(err).__name__
        return (
            f"'{path}' is truncated or corrupt ({what}). Fix: delete it; a rerun redoes the "
            "stage that wrote it."
        )
    if lightning is not None and isinstance(err, KeyError):
        path = path_of(err) or "the checkpoint"
        return (
            f"'{path}' is not a checkpoint written by infodyn (it lacks {err}). Fix: delete it; "
            "a rerun redoes the stage that wrote it."
        )
    if type(err).__name__ == "JSONDecodeError":
        path = path_of(err) or "a JSON file"
        return (
            f"'{path}' is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}). "
            "Fix: delete it (a rerun rewrites stage files and results.json) or repair it."
        )
    if type(err).__name__ == "SafetensorError":
        path = path_of(err) or "a safetensors file"
        return f"'{path}' is truncated or corrupt ({short(err)}). Fix: delete it or re-export."
    arrow = type(err).__module__.startswith("pyarrow") or (
        type(err) is OSError and err.errno is None and in_package(err, "pyarrow", "datasets")
    )
    if arrow:
        path = path_of(err) or "the tokenized data cache"
        return (
            f"the cached dataset '{path}' is truncated or corrupt ({short(err, 160)}). Fix: "
            "delete it (under paths.cache_dir / INFODYN_CACHE); the next run rebuilds it."
        )
    return None


# -- memory, tokenizer/model and label mismatches ---------------------------------------------
MEMORY_FIX = (
    "a smaller data.batch_size (keep the effective batch with trainer.accumulate_grad_batches), "
    "data.eval_batch_size or data.max_seq_length, trainer.precision=bf16-mixed, or finetune=lora; "
    "a rerun resumes from the last finished epoch."
)


def _memory(err: BaseException) -> str | None:
    text = str(err)
    if type(err).__name__ == "OutOfMemoryError" or (
        isinstance(err, RuntimeError)
        and ("CUDA out of memory" in text or "CUDA error: out of memory" in text)
    ):
        return f"the GPU ran out of memory ({short(err, 160)}). Fix: {MEMORY_FIX}"
    if isinstance(err, MemoryError):
        return f"the machine ran out of memory. Fix: data.num_workers=0, {MEMORY_FIX}"
    return None


def _index_mismatch(err: BaseException) -> str | None:
    beyond = re.match(r"index (\d+) is out of bounds for dimension \d+ with size (\d+)", str(err))
    stack = frames(err)
    if beyond and stack and "Embeddings" in type(stack[0].f_locals.get("self")).__name__:
        # an HF embeddings module slicing its position buffers: the sequence is too long
        return (
            f"a position id ({beyond.group(1)}) is beyond the model's {beyond.group(2)} "
            "positions: the sequences are longer than the model allows. Fix: a smaller "
            f"data.max_seq_length (at most {beyond.group(2)})."
        )
    if not isinstance(err, IndexError):
        return None
    emb = frame(err, "embedding", "torch/nn/functional.py")
    if emb is not None and "index out of range" in str(err):
        ids, weight = emb.f_locals.get("input"), emb.f_locals.get("weight")
        rows = getattr(weight, "shape", ["?"])[0]
        top = int(ids.max()) if hasattr(ids, "max") and ids.numel() else "?"
        table = _embedding_name(err)
        if "position" in table:
            return (
                f"a position id ({top}) is beyond the model's position table ({rows} rows): "
                "the sequences are longer than the model allows. Fix: a smaller "
                f"data.max_seq_length (at most {rows} minus the model's offset)."
            )
        return (
            f"a token id ({top}) is beyond the model's {table or 'embedding'} table ({rows} "
            "rows): the tokenizer does not belong to the model. Fix: use the tokenizer saved "
            "with the model (same model.name_or_path), or set model.config.vocab_size to at "
            "least the tokenizer's size."
        )
    found = re.match(r"Target (-?\d+) is out of bounds", str(err))
    if found:
        ce = frame(err, "cross_entropy", "torch/nn/functional.py")
        logits = ce.f_locals.get("input") if ce else None
        n = logits.shape[-1] if hasattr(logits, "shape") else "?"
        return (
            f"a label ({found.group(1)}) is beyond the classifier's {n} outputs: the data's "
            "labels do not match the task. Fix: check task=... against the data files (labels "
            "must be 0..num_labels-1), or the label column of the task's data."
        )
    return None


def _embedding_name(err: BaseException) -> str:
    """Which embedding table of the model raised (word, position, token type), if known."""
    stack = frames(err)
    for i, f in enumerate(stack):
        if f.f_code.co_name == "forward" and "torch/nn/modules/sparse.py" in (
            f.f_code.co_filename.replace(os.sep, "/")
        ):
            module = f.f_locals.get("self")
            for outer in stack[i + 1 :]:
                owner = outer.f_locals.get("self")
                if owner is module or "torch/nn/modules/" in outer.f_code.co_filename.replace(
                    os.sep, "/"
                ):
                    continue  # the Embedding's own call wrappers
                if owner is not None and hasattr(owner, "named_children"):
                    for name, child in owner.named_children():
                        if child is module:
                            return name.replace("_", " ")
                    break
    line = linecache.getline(stack[0].f_code.co_filename, stack[0].f_lineno) if stack else ""
    return "position" if "position" in line else ""


def _cuda_assert(err: BaseException) -> str | None:
    if isinstance(err, RuntimeError) and "device-side assert triggered" in str(err):
        return (
            "a CUDA kernel assertion failed (usually a token id beyond the vocabulary or a "
            "label beyond num_labels). Fix: rerun the same command with trainer=cpu, which "
            "names the offending value; then fix the tokenizer (model.name_or_path) or the task."
        )
    return None


# -- datasets (the hub) -------------------------------------------------------------------------
def _datasets_hub(err: BaseException) -> str | None:
    name = type(err).__name__
    hub = name in ("DatasetNotFoundError", "DataFilesNotFoundError") or (
        isinstance(err, ConnectionError) and "on the Hub" in str(err)
    )
    if not hub or not in_package(err, "datasets"):
        return None
    return (
        f"the dataset could not be loaded from the Hugging Face hub ({short(err, 160)}). Fix: "
        "set GLUE_DIR=<folder with the classic GLUE layout> (paths.glue_dir=...), or go online "
        "once (unset HF_HUB_OFFLINE) so that datasets caches it."
    )


RULES: tuple[Callable[[BaseException], str | None], ...] = (
    model_folder,
    _peft_targets,
    _lightning,
    _memory,
    _datasets_hub,
    _corrupt_file,
    _failed_write,
    _os,
    _index_mismatch,
    _cuda_assert,
)


# -- the CLI -------------------------------------------------------------------------------------
def cli_exit(
    err: BaseException, log_path: str | os.PathLike | None = None, stream: TextIO | None = None
) -> int | None:
    """Tell the user about `err` on stderr; the exit code, or None to re-raise `err` unchanged.

    A known failure prints one `error: ...` paragraph and returns 2 (input) or 3 (diverged); an
    unknown one prints one line naming the log and returns None, so that its traceback (a bug)
    stays visible. Either way the full traceback goes to the job's log file (`log_path`, by
    default Hydra's `<output dir>/<job>.log`, found from the logging handlers).
    """
    stream = stream or sys.stderr
    if isinstance(err, SystemExit | GeneratorExit):
        return None
    log_path = log_path or job_log_path()
    if isinstance(err, KeyboardInterrupt):
        print(
            "error: interrupted. Rerun the same command: the job resumes from its last "
            "finished epoch or stage.",
            file=stream,
        )
        return EXIT_INTERRUPTED
    try:
        text = explain(err)
    except Exception:  # noqa: BLE001 - explaining must never hide the error it explains
        text = None
    _traceback_to_log_files(err, text or "unexpected error")
    if text is None:
        where = f"the full log is {log_path}" if log_path else "there is no log file"
        print(
            f"error: unexpected {type(err).__name__} (a bug, or a failure infodyn does not "
            f"know yet; its traceback follows); {where}. Please report it with that log.",
            file=stream,
            flush=True,
        )
        return None
    print(f"error: {text}", file=stream, flush=True)
    return EXIT_DIVERGED if isinstance(err, TrainingDivergedError) else EXIT_USER


def job_log_path() -> Path | None:
    """The file the root logger writes to (Hydra's job log), or None outside Hydra."""
    for lg in (logging.getLogger(), log):
        for handler in lg.handlers:
            if isinstance(handler, logging.FileHandler) and handler.baseFilename != os.devnull:
                return Path(handler.baseFilename)
    return None


def _traceback_to_log_files(err: BaseException, text: str) -> None:
    """The traceback into the log files only: the console shows the paragraph (or Hydra's)."""
    record = log.makeRecord(
        log.name, logging.ERROR, __file__, 0, text, (), (type(err), err, err.__traceback__)
    )
    for lg in (logging.getLogger(), log):
        for handler in lg.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)
