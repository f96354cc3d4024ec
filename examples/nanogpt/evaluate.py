"""
Score the model that train.py saved, in a process of its own: val_bpb on the validation split.

Protected: the proposer never edits this file. Only the number it prints counts. It loads
$AUTORESEARCH_ARTIFACTS/model.pt2 (a torch.export program), refuses archives that could run code
or that hold anything but tensor ops, feeds it the validation windows from prepare.py and computes
the loss itself, then checks that the model is deterministic and causal: at every position t, the
losses it was scored on at positions <= t must not move when the tokens after t change, nor with
the other rows of the batch or the row a window sits in (prepare.causality_probe).

    python evaluate.py [ARTIFACTS_DIR]        # default: $AUTORESEARCH_ARTIFACTS, else ./artifacts
    python evaluate.py --holdout [ARTIFACTS_DIR]  # the same checks and score on the holdout split

With --holdout (autoresearch.toml `holdout`: the harness re-scores kept winners' saved models, never
to keep or discard) it scores the holdout split, which the loop never optimises on, and prints
`test_bpb` and `METRIC val_bpb=...` (the run's metric, measured on the third split; not the
`holdout_bpb` train.py prints, which is held-out training text).
"""

from __future__ import annotations

import argparse
import io
import json
import operator
import os
import re
import sys
import time
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # set before torch loads: spinning threads stall on shared cores
import torch  # noqa: E402

from prepare import (PrepareError, Tokenizer, autocast_dtype, causality_probe, evaluate_bpb, hardware,
                     holdout_batches, token_losses, val_batches)

MODEL_FILE = "model.pt2"

# Everything torch.export.save writes for one model with tensor weights, and nothing else: other
# entries (pickled weights, custom objects, extra files) could run code while loading.
ARCHIVE_ENTRY = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id|models/model\.json"
    r"|data/sample_inputs/model\.pt|data/weights/model_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+)")
OP_TARGET = re.compile(r"torch\.ops\.aten\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+|_operator\.getitem")
DENIED_OPS = {"from_file", "_print", "_assert_async"}  # aten ops that touch files or print
ARG_KINDS = {"as_none", "as_tensor", "as_tensors", "as_optional_tensors", "as_int", "as_ints", "as_float",
             "as_floats", "as_bool", "as_bools", "as_string", "as_strings", "as_scalar_type", "as_memory_format",
             "as_layout", "as_device"}


class Rejected(Exception):
    """The saved model cannot be scored; the message says why."""


def check_archive(raw: bytes) -> None:
    """Inspect the archive before torch touches it: only tensors and a graph of aten ops."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(raw))
    except zipfile.BadZipFile:
        raise Rejected(f"{MODEL_FILE} is not a torch.export archive; save it with torch.export.save") from None
    names = zf.namelist()
    prefix = names[0].split("/", 1)[0] if names else ""
    for name in names:
        if not (name.startswith(prefix + "/") and ARCHIVE_ENTRY.fullmatch(name[len(prefix) + 1:])):
            raise Rejected(f"{MODEL_FILE} holds an unexpected entry {name!r}; save the model with "
                           "torch.export.save and nothing else")

    def read_json(entry):
        try:
            return json.loads(zf.read(f"{prefix}/{entry}"))
        except (KeyError, ValueError):
            raise Rejected(f"{MODEL_FILE} lacks a readable {entry}") from None

    for entry, kind in (("data/weights/model_weights_config.json", "weight_"),
                        ("data/constants/model_constants_config.json", "tensor_")):
        for fqn, meta in read_json(entry).get("config", {}).items():
            if meta.get("use_pickle") or not str(meta.get("path_name", "")).startswith(kind):
                raise Rejected(f"{MODEL_FILE}: {fqn} is stored as a Python object, not a tensor")
    try:  # sample inputs are loaded by torch; make sure they are plain tensors
        torch.load(io.BytesIO(zf.read(f"{prefix}/data/sample_inputs/model.pt")), weights_only=True)
    except Exception:
        raise Rejected(f"{MODEL_FILE}: its sample inputs are not plain tensors") from None

    program = read_json("models/model.json")
    graph = program.get("graph_module", {}).get("graph", {})
    if program.get("guards_code") or program.get("range_constraints"):
        raise Rejected(f"{MODEL_FILE} has shape guards or dynamic shapes; export with a fixed input shape")
    for key in ("sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"):
        if graph.get(key):
            raise Rejected(f"{MODEL_FILE} has symbolic values or custom objects ({key}); export plain tensor code")
    for node in graph.get("nodes", []):
        target = str(node.get("target"))
        op_name = target.split(".")[3] if target.startswith("torch.ops.aten.") else ""
        if not OP_TARGET.fullmatch(target) or op_name in DENIED_OPS:
            raise Rejected(f"{MODEL_FILE} calls {target!r}; only aten tensor ops are allowed")
        for arg in node.get("inputs", []):
            kinds = set(arg.get("arg", {})) if isinstance(arg.get("arg"), dict) else {"?"}
            if not kinds <= ARG_KINDS:
                raise Rejected(f"{MODEL_FILE}: {target} takes a {sorted(kinds - ARG_KINDS)[0]} argument; "
                               "only tensors and plain values are allowed")


def load_model(path: Path, device: str):
    if not path.is_file():
        raise Rejected(f"{path} not found: train.py must save its model there with torch.export.save")
    raw = path.read_bytes()  # read once: what is checked is what is loaded
    check_archive(raw)
    try:
        program = torch.export.load(io.BytesIO(raw))
    except Exception as err:
        raise Rejected(f"{path} could not be loaded ({type(err).__name__}: {err})") from None
    sig = program.graph_signature
    if sig.buffers_to_mutate or sig.user_inputs_to_mutate or len(sig.user_outputs) != 1 or len(sig.user_inputs) != 1:
        raise Rejected("the saved model must take one tensor of token ids, return one tensor of logits, "
                       "and change no state while it runs")
    for node in program.graph.nodes:
        if node.op == "call_function":
            aten = isinstance(node.target, torch._ops.OpOverload) and node.target.namespace == "aten"
            if not (aten or node.target is operator.getitem):
                raise Rejected(f"the saved model calls {node.target}; only aten tensor ops are allowed")
            if aten and node.target._schema.is_mutable:
                raise Rejected(f"the saved model calls {node.target}, which changes its inputs in place; "
                               "the saved program must not keep state")
        elif node.op not in ("placeholder", "output", "get_attr"):
            raise Rejected(f"the saved model has a {node.op} node; only aten tensor ops are allowed")
    module = program.module()
    if any(p.device.type != torch.device(device).type for p in module.parameters()):
        raise Rejected(f"the saved model's weights are not on {device}; save it from the training device")
    return module


def main(argv: list[str]) -> int:
    t0 = time.time()
    parser = argparse.ArgumentParser(description="Score the model that train.py saved, in val_bpb.")
    parser.add_argument("artifacts", nargs="?", help="folder holding model.pt2 (default: $AUTORESEARCH_ARTIFACTS or ./artifacts)")
    parser.add_argument("--corpus", help="the corpus prepare.py prepared (default: $AUTORESEARCH_CORPUS or shakespeare)")
    parser.add_argument("--holdout", action="store_true", help="score the holdout split instead of the validation split")
    args = parser.parse_args(argv)
    split = "holdout" if args.holdout else "validation"
    folder = Path(args.artifacts or os.environ.get("AUTORESEARCH_ARTIFACTS") or "artifacts")
    try:
        hw = hardware()
        device, dtype = hw["device"], autocast_dtype(hw)
        tokenizer = Tokenizer.load(args.corpus)
        batches = holdout_batches(args.corpus) if args.holdout else val_batches(args.corpus)
        model = load_model(folder / MODEL_FILE, device)
        try:
            losses = token_losses(model, batches, device, dtype, tokenizer.vocab_size)
            reason = causality_probe(model, batches, losses, device, dtype, tokenizer.vocab_size)
            if reason:
                raise Rejected(reason)
            result = evaluate_bpb(losses, batches, tokenizer.token_bytes())
        except RuntimeError as err:  # shape or dtype mismatch inside the saved graph
            raise Rejected(f"the saved model failed on a {split} batch ({str(err).splitlines()[0]})") from None
    except (Rejected, PrepareError) as err:
        print(f"evaluate.py: rejected: {err}", file=sys.stderr, flush=True)
        print(f"rejected: {err}", flush=True)
        return 3
    print("---")
    if args.holdout:  # the run's metric on the third split (train.py's own holdout_bpb is training text)
        print("split:            holdout")
        print(f"test_bpb:         {result['val_bpb']:.6f}")
        print(f"test_loss:        {result['val_loss']:.6f}")
        print(f"METRIC val_bpb={result['val_bpb']:.6f}")  # what the harness reads
    else:
        print(f"val_bpb:          {result['val_bpb']:.6f}")
        print(f"val_loss:         {result['val_loss']:.6f}")
    print(f"eval_tokens:      {result['eval_tokens']}")
    print(f"eval_bytes:       {result['eval_bytes']}")
    print(f"eval_seconds:     {time.time() - t0:.1f}")
    print("causality:        ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
