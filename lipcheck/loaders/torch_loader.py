"""PyTorch → lipcheck graph IR, through an in-memory ONNX export and the ONNX loader.

One IR, one set of rules: a PyTorch model is exported in memory with torch's TorchScript-based ONNX exporter
(opset 17, no constant folding, BatchNorm kept as it is: ``TrainingMode.PRESERVE`` on an eval-mode module)
and read by :func:`lipcheck.loaders.onnx_loader.load_onnx`, so a model gives the same numbers whichever way
it arrives. That exporter names initializers after the module's parameters (``features.0.weight``), so the
report's ``param`` column carries the torch names. Every torch-version shim lives in this file.

What it reads (:func:`sniff` tells the kinds apart without executing anything):

- TorchScript archives (``torch.jit.save``): compiled and inspected before anything of them runs
  (:func:`load_torchscript`): lipcheck runs a model's forward (export, lower bound, parity), so without
  ``trust_pickle`` an archive whose code has side effects (files, printing, Python, custom ops or classes,
  a ``__setstate__`` that loading would run) is refused.
- torch.export programs (``torch.export.save``, ``.pt2``): ``torch.export.load``; they carry their input shape.
- ``torch.save`` files: loaded with ``weights_only=True``. A whole pickled module needs unpickling, which
  runs code from the file: only with ``trust_pickle=True`` (``--trust-pickle``: "trust this file to run its
  own code").
- State dicts and training checkpoints: need ``arch`` (``package.module:factory`` or ``path/file.py:factory``,
  a callable returning the ``nn.Module``); nested state dicts are found under common keys, ``key`` picks one;
  DataParallel ``module.`` and torch.compile ``_orig_mod.`` prefixes are stripped; spectral_norm / weight_norm
  checkpoints load into an architecture with or without those parametrizations.
- A live ``nn.Module`` (also a ``ScriptModule``, an ``ExportedProgram``) through the Python API.

The model is analysed in eval mode; a live module's training flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import os
import pickletools
import re
import sys
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lipcheck.errors import InputShapeError, LoadError, UnsupportedModelError
from lipcheck.ir.graph import Graph
from lipcheck.loaders import TorchOptions, check_model_file
from lipcheck.threads import configure_torch

configure_torch()  # the thread count the CLI chose (lipcheck.threads), if any

OPSET = 17
TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".ckpt", ".bin", ".tar", ".pkl", ".jit", ".ts")
# where training scripts put the state dict inside a checkpoint, in the order they are tried
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "network", "module",
                   "ema", "model_ema", "params")
_PREFIXES = ("module.", "_orig_mod.")

InputShapes = Sequence[int] | Mapping[str, Sequence[int]] | None


@dataclasses.dataclass
class _Loaded:
    module: nn.Module
    kind: str  # human description: "TorchScript archive", "state dict (--arch ...)", ...
    example_shapes: list[tuple[int, ...]] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------------ detection


def sniff(path: Path) -> str:
    """The kind of a file, from its bytes, executing nothing: "torchscript", "export", "pickle" (a torch.save
    zip or legacy pickle), "onnx-or-other" (anything else), with clear errors for missing/empty files."""
    check_model_file(path)
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise LoadError(f"{path}: a damaged zip archive (truncated or corrupt PyTorch file?): {exc}") from exc
        if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
            return "torchscript"
        if any(n.endswith(("/archive_format", "/models/model.json", "serialized_exported_program.json"))
               for n in names):
            return "export"
        if any(n.endswith("data.pkl") for n in names):
            return "pickle"
        raise LoadError(f"{path}: a zip archive that is not a PyTorch file lipcheck knows (no data.pkl, "
                        "TorchScript code or torch.export program inside)")
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    return "onnx-or-other"


def looks_like_torch(path: Path) -> bool:
    try:
        return sniff(path) != "onnx-or-other"
    except LoadError:
        return path.suffix.lower() in TORCH_SUFFIXES


def _pickle_globals(path: Path) -> list[str]:
    """The classes and functions a torch.save pickle refers to, read from its opcodes without executing it."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next(n for n in z.namelist() if n.endswith("data.pkl"))
                data = z.read(name)
        else:
            data = path.read_bytes()
        found: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(io.BytesIO(data)):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                found.append(arg.replace(" ", "."))
            elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
                strings.append(str(arg))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
        return list(dict.fromkeys(found))
    except Exception:  # noqa: BLE001 - best effort: only used to word an error message
        return []


_SAFE_GLOBALS = re.compile(r"^(collections\.OrderedDict|__builtin__\.\w+|torch\._utils\._rebuild\w*|"
                           r"torch\.\w*Storage|torch\.(float|int|bool|bfloat|uint|complex)\w*|builtins\.\w+|_codecs\.encode|"
                           r"numpy\.\S+|torch\.Size|torch\.device|torch\.dtype)$")


# --------------------------------------------------------------------------------------------- loading


def _load_file(path: Path, options: TorchOptions) -> _Loaded:
    kind = sniff(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            return _Loaded(load_torchscript(path, options), "TorchScript archive")
        if kind == "export":
            if not options.trust_pickle:
                _check_export_archive(path)
            try:
                program = torch.export.load(str(path))
            except Exception as exc:  # noqa: BLE001
                raise LoadError(f"{path}: a torch.export program that torch.export.load cannot read "
                                f"({_short(exc)})") from exc
            if not options.trust_pickle:
                refusal = export_refusal(program)
                if refusal:
                    raise LoadError(f"{path}: {refusal}; lipcheck runs the model to check it, so it does not: "
                                    f"{TRUST_HINT}")
            return _from_exported_program(program)
        if kind != "pickle":
            raise LoadError(f"{path}: not a PyTorch file (expected a TorchScript archive, a torch.export .pt2 "
                            "program, or a torch.save checkpoint)")
    obj = read_torch_save(path, options)
    if isinstance(obj, nn.Module):
        return _Loaded(obj, "pickled nn.Module (--trust-pickle)")
    if isinstance(obj, Mapping):
        return _from_state_dict(obj, path, options)
    raise LoadError(f"{path}: a torch.save file holding a {type(obj).__module__}.{type(obj).__name__}, neither "
                    "a module nor a state dict: lipcheck does not know what model it describes")


def read_torch_save(path: Path, options: TorchOptions) -> Any:
    """The object a ``torch.save`` file holds (a state dict, a checkpoint, a module, ...): loaded with
    ``weights_only=True``; a file that needs full unpickling only with ``options.trust_pickle``, else a
    :class:`LoadError` that says so and names the classes the pickle refers to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an UnpicklingError for anything but tensors and containers
            if "magic number" in str(exc).lower():
                raise LoadError(f"{path}: a plain Python pickle, not a torch.save checkpoint: lipcheck reads "
                                "PyTorch files and ONNX models") from exc
            if not _is_unsafe_pickle_error(exc):
                raise LoadError(f"{path}: a torch.save file that cannot be read: truncated or corrupt? "
                                f"({_short(exc)})") from exc
            if not options.trust_pickle:
                refs = [g for g in _pickle_globals(path) if not _SAFE_GLOBALS.match(g)]
                what = f" (it refers to {', '.join(refs[:3])}{', ...' if len(refs) > 3 else ''})" if refs else ""
                raise LoadError(
                    f"{path}: a pickled Python object{what}, e.g. a whole model saved with torch.save(model); "
                    "unpickling it runs code from the file, so lipcheck does not: pass --trust-pickle if you "
                    "trust its source (or save model.state_dict() and pass --arch)"
                ) from None
            obj = _unpickle_trusted(path)
    return obj


def _is_unsafe_pickle_error(exc: BaseException) -> bool:
    text = str(exc)
    return "weights_only" in text.lower() or "Unsupported global" in text or "WeightsUnpickler" in text


def _unpickle_trusted(path: Path) -> Any:
    with _cwd_on_path():
        try:
            return torch.load(str(path), map_location="cpu", weights_only=False)
        except (ModuleNotFoundError, AttributeError) as exc:
            raise LoadError(
                f"{path}: the pickle needs code that cannot be imported ({_short(exc)}): run lipcheck where the "
                "model's package is importable (its project folder, or PYTHONPATH)"
            ) from exc
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{path}: unpickling failed ({_short(exc)})") from exc


def _from_exported_program(program: Any) -> _Loaded:
    shapes = None
    try:
        args, kwargs = program.example_inputs
        if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
            shapes = [tuple(int(d) for d in a.shape) for a in args]
    except Exception:  # noqa: BLE001 - older programs without example inputs: --input-shape then
        shapes = None
    return _Loaded(program.module(), "torch.export program", example_shapes=shapes)


# ------------------------------------------------------------------------------------ TorchScript code

TRUST_HINT = "pass --trust-pickle if you trust this file to run its own code"
# TorchScript code may call ops of these namespaces only; the rest (custom libraries, quantized::, cuda::,
# profiler::, ...) could do anything their C++ does
_SAFE_NAMESPACES = frozenset({"aten", "prim"})
# aten / prim ops with effects outside the tensors, and what they do
_UNSAFE_OPS = {
    "aten::from_file": "maps a file into a tensor",
    "aten::save": "writes a file",
    "aten::_print": "prints",
    "prim::Print": "prints",
    "prim::PythonOp": "calls Python code",
    "prim::IgnoredPythonOp": "calls Python code",
    "prim::rpc_async": "calls another process",
    "prim::rpc_remote": "calls another process",
    "prim::rpc_sync": "calls another process",
    "aten::set_": "points a tensor at other storage",
}
# any other aten / prim op whose name says it may touch files, storage, processes or Python
_UNSAFE_WORDS = re.compile(r"file|save|load|print|pickle|python|rpc|storage|mmap|shm|socket|system|exec|popen|"
                           r"library", re.IGNORECASE)
_HARMLESS_OPS = frozenset({"aten::storage_offset", "aten::sym_storage_offset", "aten::_has_same_storage_numel",
                           "aten::_nested_tensor_storage_offsets", "aten::isprintable"})
_CUSTOM_CLASS = "__torch__.torch.classes."


def load_torchscript(path: Path, options: TorchOptions) -> nn.Module:
    """A TorchScript archive as a module, none of whose code has run and none of whose code can have side
    effects when run: without ``options.trust_pickle`` an archive that defines ``__setstate__`` (which
    ``torch.jit.load`` runs while loading) is refused before loading, and after compiling, every function of
    the archive (every method of every module and class, hooks, free functions) is inspected by
    :func:`torchscript_refusal`; a :class:`LoadError` names the op and the method."""
    if options.trust_pickle:
        try:
            module: nn.Module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise LoadError(f"{path}: a TorchScript archive that torch.jit.load cannot read ({_short(exc)})") \
                from exc
        return module
    setstate = _setstate_files(path)
    if setstate:
        raise LoadError(f"{path}: the TorchScript archive defines __setstate__ ({setstate[0]}), code that loading "
                        f"runs before lipcheck could inspect it, so lipcheck does not load it: {TRUST_HINT}")
    try:
        unit = torch._C.CompilationUnit()
        try:
            cpp_module = torch._C.import_ir_module(unit, str(path), torch.device("cpu"), {}, False)  # type: ignore[call-arg]
        except TypeError:  # torch versions without the _restore_shapes argument
            cpp_module = torch._C.import_ir_module(unit, str(path), torch.device("cpu"), {})
        from torch.jit._recursive import wrap_cpp_module

        module = wrap_cpp_module(cpp_module)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path}: a TorchScript archive that torch.jit.load cannot read ({_short(exc)})") from exc
    refusal = torchscript_refusal(_script_functions(unit, module))
    if refusal:
        raise LoadError(f"{path}: {refusal}; lipcheck runs the model to check it, so it does not: {TRUST_HINT}")
    return module


def _setstate_files(path: Path) -> list[str]:
    """The code files of a TorchScript archive that mention ``__setstate__``, read as bytes (nothing compiled).

    The TorchScript lexer only takes ASCII identifiers, so a method of that name contains these bytes."""
    with zipfile.ZipFile(path) as z:
        return [name for name in z.namelist() if name.endswith(".py") and b"__setstate__" in z.read(name)]


def _script_functions(unit: Any, module: Any) -> list[tuple[str, Any]]:
    """(name, graph) of every function compiled from the archive: the compilation unit's functions (methods of
    modules and classes, hooks, free functions) and, to be sure, every method and hook of every submodule."""
    found: dict[str, Any] = {}
    for function in unit.get_functions():
        found[function.qualified_name] = function.graph
    for submodule in module.modules():
        c_module = submodule._c
        owner = c_module._type().qualified_name()
        for name in c_module._method_names():
            found.setdefault(f"{owner}.{name}", c_module._get_method(name).graph)
        for hook in (*c_module._get_forward_pre_hooks(), *c_module._get_forward_hooks()):
            found.setdefault(f"{owner}.{hook.name}", hook.graph)
    return list(found.items())


def torchscript_refusal(functions: Sequence[tuple[str, Any]]) -> str | None:
    """Why TorchScript code may not run (the first op with effects outside the model, and in which
    method), or None: only ops of the aten and prim namespaces, minus those that touch files, print, call
    Python or other processes; no custom classes. An allowlist of namespaces, so an unknown op is refused."""
    problems: list[str] = []
    for name, graph in functions:
        shown = name.removeprefix("__torch__.")
        for node in _all_nodes(graph):
            why = _unsafe_node(node)
            if why:
                problems.append(f"{node.kind()} ({why}) in {shown}")
                break
    if not problems:
        return None
    others = len(problems) - 1
    more = f", and {others} other method{'s' if others > 1 else ''} call such ops" if others else ""
    return f"the TorchScript code calls {problems[0]}{more}"


def _all_nodes(graph: Any) -> Iterator[Any]:
    """Every node of a graph: nested blocks (if, loop, with) and subgraph attributes (fork, fusion groups)."""
    blocks = [graph.block()]
    while blocks:
        block = blocks.pop()
        yield block.paramNode()
        for node in block.nodes():
            yield node
            blocks.extend(node.blocks())
            for attribute in node.attributeNames():
                kind = node.kindOf(attribute)
                if kind == "g":
                    blocks.append(node.g(attribute).block())
                elif kind == "gs":
                    blocks.extend(g.block() for g in node.gs(attribute))


def unsafe_op(kind: str) -> str | None:
    """Why the op ``namespace::name`` may have effects outside the tensors it computes, or None."""
    namespace, _, op = kind.partition("::")
    if namespace not in _SAFE_NAMESPACES:
        return "an op from outside aten and prim: lipcheck cannot tell what it does"
    if kind in _UNSAFE_OPS:
        return _UNSAFE_OPS[kind]
    if kind not in _HARMLESS_OPS and _UNSAFE_WORDS.search(op):
        return "an op that may touch files, processes or Python"
    return None


def _unsafe_node(node: Any) -> str | None:
    why = unsafe_op(str(node.kind()))
    if why:
        return why
    for value in node.outputs():
        if _CUSTOM_CLASS in str(value.type()):
            return f"a custom C++ class {value.type()}: lipcheck cannot tell what it does"
    return None


# ------------------------------------------------------------------------------ torch.export programs

_ARCHIVE_METADATA = frozenset({"archive_format", "archive_version", "version", "byteorder", "serialization_id"})
# higher-order ops whose work is a subgraph of the program (inspected like the rest)
_SAFE_HIGHER_ORDER = frozenset({"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled",
                                "wrap_with_autocast", "invoke_subgraph"})


def _check_export_archive(path: Path) -> None:
    """Refuse a torch.export archive that ``torch.export.load`` would unpickle with ``weights_only=False``
    (pickled weights or constants, custom or opaque objects, pickles the weights-only unpickler refuses)
    or that holds a part lipcheck does not know (compiled AOTInductor code, ...), before loading it."""
    with zipfile.ZipFile(path) as z:
        raw: set[str] = set()
        for name in z.namelist():
            if not name.endswith(("model_weights_config.json", "model_constants_config.json")):
                continue
            folder = name.rsplit("/", 1)[0]
            try:
                config = json.loads(z.read(name))["config"]
                entries = [(str(fqn), dict(meta)) for fqn, meta in config.items()]
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise LoadError(f"{path}: {name} is not a torch.export payload list ({_short(exc)})") from exc
            for fqn, meta in entries:
                file = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or not file.startswith(("weight_", "tensor_")):
                    raise LoadError(f"{path}: the torch.export archive stores {fqn} as a pickled object, which "
                                    f"loading unpickles (runs code from the file): {TRUST_HINT}")
                raw.add(f"{folder}/{file}")
        for info in z.infolist():
            name = info.filename
            base = name.rsplit("/", 1)[-1]
            if name.endswith("/") or name in raw or name.endswith(".json") or base in _ARCHIVE_METADATA \
                    or "/extra/" in f"/{name}":
                continue
            data = z.read(name)
            if not data.startswith((b"PK\x03\x04", b"\x80")):
                raise LoadError(f"{path}: the torch.export archive holds {name}, a part lipcheck does not inspect "
                                f"(compiled code?): {TRUST_HINT}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch.export.load would retry with weights_only=False
                raise LoadError(f"{path}: the torch.export archive holds {name}, a pickle that only full "
                                f"unpickling reads (runs code from the file): {TRUST_HINT}") from exc


def export_refusal(program: Any) -> str | None:
    """Why the exported program's graph may not run (the first op with effects outside the model, and in which
    graph), or None: the same op policy as for TorchScript (:func:`unsafe_op`); Python callables only from
    ``operator``, ``math`` and torch's symbolic-shape helpers; known higher-order ops, whose subgraphs are
    submodules and inspected too."""
    import operator

    for prefix, submodule in program.graph_module.named_modules():
        graph = getattr(submodule, "graph", None)
        shown = prefix or "the program's graph"
        for node in getattr(graph, "nodes", ()):
            if node.op == "call_method":
                return f"the exported program calls the method {node.target!r} in {shown}"
            if node.op != "call_function":
                continue
            target = node.target
            if isinstance(target, torch._ops.HigherOrderOperator):
                if target.name() not in _SAFE_HIGHER_ORDER:
                    return f"the exported program calls the higher-order op {target.name()} in {shown}"
                continue
            schema = getattr(target, "_schema", None)
            if schema is not None:
                why = unsafe_op(str(schema.name))
                if why:
                    return f"the exported program calls {schema.name} ({why}) in {shown}"
                continue
            module = getattr(target, "__module__", None) or ""
            name = getattr(target, "__name__", "")
            if getattr(operator, name, None) is target or module in ("_operator", "operator", "math") \
                    or (module.startswith("torch") and name.startswith(("sym_", "_sym_"))):
                continue
            return f"the exported program calls the Python function {module}.{name} in {shown}"
    return None


# ----------------------------------------------------------------------------------------- state dicts


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Mapping[str, Any], key: str | None, label: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict inside a checkpoint and where it was found (``key`` picks; dotted paths allowed)."""
    path, where = locate_state_dict(obj, key, label)
    node: Any = obj
    for part in path:
        node = node[part]
    return {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}, where


def locate_state_dict(obj: Mapping[str, Any], key: str | None, label: str) -> tuple[tuple[Any, ...], str]:
    """Where the state dict sits in a checkpoint: the keys that lead from ``obj`` to the mapping that holds it
    (``()``: ``obj`` itself; its non-tensor entries are not part of it) and a description for notes."""
    if key is not None:
        node: Any = obj
        path = (key,) if key in obj else tuple(key.split("."))
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                keys = ", ".join(repr(k) for k in list(obj)[:8])
                raise LoadError(f"{label}: --key {key!r} not found in the checkpoint (its keys: {keys})")
            node = node[part]
        if not isinstance(node, Mapping) or not (_is_empty_dict(node)
                                                 or any(isinstance(v, torch.Tensor) for v in node.values())):
            raise LoadError(f"{label}: --key {key!r} does not hold a state dict (no tensors under it)")
        return path, f"under {key!r}"
    if _is_tensor_dict(obj):
        return (), "at the top level"
    if _is_empty_dict(obj):  # torch.save(model.state_dict()) of a model without weights (Sigmoid, ReLU → Tanh)
        return (), "at the top level (empty: a model without weights)"
    found = [k for k in STATE_DICT_KEYS if _is_tensor_dict(obj.get(k))]
    found += [k for k, v in obj.items() if k not in found and _is_tensor_dict(v) and _looks_like_weights(v)]
    if len(found) == 1 or (found and found[0] in STATE_DICT_KEYS):
        return (found[0],), f"under {found[0]!r}"
    tensors = [k for k, v in obj.items() if isinstance(v, torch.Tensor)]
    if tensors and len(tensors) >= len(obj) / 2:
        return (), "at the top level (non-tensor entries ignored)"
    if not found and not tensors:  # a checkpoint of a model without weights: its state dict is empty
        empty = [k for k in STATE_DICT_KEYS if _is_empty_dict(obj.get(k))]
        if empty:
            return (empty[0],), f"under {empty[0]!r} (empty: a model without weights)"
    keys = ", ".join(repr(k) for k in list(obj)[:8])
    raise LoadError(f"{label}: a checkpoint without a state dict lipcheck recognises (keys: {keys}); "
                    "pass --key NAME to pick the one that holds the model's weights")


def _is_empty_dict(obj: Any) -> bool:
    """An empty mapping: what ``state_dict()`` gives for a model without parameters or buffers."""
    return isinstance(obj, Mapping) and not obj


def _looks_like_weights(v: Mapping[str, Any]) -> bool:
    return any(str(k).endswith(("weight", "bias", "weight_orig", "original")) for k in v)


def _strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> tuple[dict[str, torch.Tensor], str | None]:
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in wanted):
            return {k[len(prefix):]: v for k, v in state.items()}, prefix
    return state, None


def build_arch(spec: str, kwargs: Mapping[str, Any] | None) -> nn.Module:
    """``package.module:factory`` or ``path/to/file.py:factory`` → the nn.Module the factory returns."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise LoadError(f"--arch {spec!r}: expected package.module:factory or path/to/file.py:factory")
    with _cwd_on_path():
        try:
            if target.endswith(".py") or os.sep in target or "/" in target:
                file = Path(target)
                if not file.is_file():
                    raise LoadError(f"--arch {spec!r}: no such file {file}")
                name = f"_lipcheck_arch_{abs(hash(str(file.resolve())))}"
                spec_ = importlib.util.spec_from_file_location(name, file)
                if spec_ is None or spec_.loader is None:
                    raise LoadError(f"--arch {spec!r}: cannot import {file}")
                module = importlib.util.module_from_spec(spec_)
                sys.modules[name] = module
                spec_.loader.exec_module(module)
            else:
                module = importlib.import_module(target)
        except LoadError:
            raise
        except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, errors at import time
            raise LoadError(f"--arch {spec!r}: importing {target} failed ({_short(exc)})") from exc
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise LoadError(f"--arch {spec!r}: {target} has no attribute {part!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise LoadError(f"--arch {spec!r}: {attr} is not callable")
    try:
        built = factory(**dict(kwargs or {}))
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"--arch {spec!r}: calling {attr}(**{dict(kwargs or {})}) failed ({_short(exc)})") from exc
    if not isinstance(built, nn.Module):
        raise LoadError(f"--arch {spec!r}: {attr} returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def _from_state_dict(obj: Mapping[str, Any], path: Path, options: TorchOptions) -> _Loaded:
    label = str(path)
    state, where = find_state_dict(obj, options.key, label)
    if options.arch is None:
        example = ", ".join(repr(k) for k in list(state)[:2])
        what = (f"a state dict ({len(state)} tensors, e.g. {example}) holds weights but not the architecture" if state
                else "an empty state dict (a model without weights) does not say which model it is")
        raise LoadError(
            f"{label}: {what}: "
            "pass --arch package.module:factory (or path/to/file.py:factory), a callable that builds the nn.Module"
        )
    module = build_arch(options.arch, options.arch_kwargs)
    notes = [f"state dict found {where} in the checkpoint, architecture from --arch {options.arch}"]
    load_state(module, state, label, notes)
    return _Loaded(module, f"state dict (--arch {options.arch})", notes=notes)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], label: str, notes: list[str]) -> None:
    """``module.load_state_dict`` with prefixes stripped and spectral_norm / weight_norm keys converted to
    the architecture's form; missing, unexpected and mis-shaped keys are one clear error."""
    from lipcheck.loaders.parametrizations import to_plain_state_dict

    wanted = set(module.state_dict())
    state, prefix = _strip_prefixes(state, wanted)
    if prefix:
        notes.append(f"the {prefix!r} prefix (DataParallel / torch.compile) was stripped from the keys")
    if set(state) - wanted:
        arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
        plain, conversions = to_plain_state_dict(arrays, wanted)
        if conversions:
            state = {k: state[k] if k in state else torch.from_numpy(np.array(v)) for k, v in plain.items()}
            notes.extend(conversions)
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_few(unexpected)}")
        raise LoadError(f"{label}: the state dict does not fit the --arch model: " + "; ".join(parts))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:3]) + (f"; ... ({len(lines)} in all)" if len(lines) > 3 else "")
        raise LoadError(f"{label}: the state dict does not fit the --arch model: {detail or _short(exc)}") from exc


def _few(keys: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return f"{shown}{f', ... ({len(keys)} in all)' if len(keys) > n else ''}"


# --------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[bool]:
    """Eval mode for the duration; every submodule's own training flag is restored afterwards.
    Yields whether anything was in training mode."""
    flags = [(m, m.training) for m in module.modules()]
    was_training = any(t for _, t in flags)
    for m, _ in flags:  # what nn.Module.eval() does; torch.export's GraphModules refuse .eval() itself
        m.training = False
    try:
        yield was_training
    finally:
        for m, t in flags:
            m.training = t


@contextlib.contextmanager
def _export_shims() -> Iterator[None]:
    """torch's parametrized spectral_norm computes σ = vdot(u, W_mat v); the TorchScript exporter has no
    symbolic for aten::vdot. For real 1-D tensors vdot is exactly ONNX MatMul (1-D × 1-D → scalar)."""

    def vdot(g: Any, a: Any, b: Any) -> Any:
        return g.op("MatMul", a, b)

    torch.onnx.register_custom_op_symbolic("aten::vdot", vdot, OPSET)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::vdot", OPSET)


def _shapes(input_shape: InputShapes, loaded: _Loaded, label: str) -> tuple[list[str], list[tuple[int, ...]]]:
    if input_shape is None:
        if loaded.example_shapes:
            shapes = loaded.example_shapes
            return [f"input_{i}" if len(shapes) > 1 else "input" for i in range(len(shapes))], shapes
        raise InputShapeError(
            f"{label}: a {loaded.kind} does not record its input shape: pass --input-shape, "
            "e.g. --input-shape 1,3,32,32 (NAME=SHAPE once per input for several inputs)"
        )
    if isinstance(input_shape, Mapping):
        names = [str(k) for k in input_shape]
        return names, [tuple(int(d) for d in input_shape[k]) for k in input_shape]
    return ["input"], [tuple(int(d) for d in input_shape)]


def _dtype_of(module: nn.Module) -> torch.dtype:
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def export_onnx(module: nn.Module, names: list[str], shapes: list[tuple[int, ...]], label: str) -> bytes:
    """The eval-mode module as ONNX bytes (TorchScript exporter, opset 17, parameters under their names)."""
    dtype = _dtype_of(module)
    args = tuple(torch.zeros(s, dtype=dtype) for s in shapes)
    shape_text = ", ".join("×".join(str(d) for d in s) for s in shapes)
    try:
        with torch.no_grad():
            module(*args)
    except Exception as exc:  # noqa: BLE001 - the user's forward
        raise LoadError(f"{label}: the model's forward failed on an input of shape {shape_text} "
                        f"({_short(exc)}): check --input-shape") from exc
    buf = io.BytesIO()
    try:
        with _export_shims():
            torch.onnx.export(
                module, args, buf,  # type: ignore[arg-type]
                dynamo=False, opset_version=OPSET, input_names=names,
                do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE, export_params=True,
                keep_initializers_as_inputs=False,
            )
    except Exception as exc:  # noqa: BLE001 - an op the exporter cannot express
        raise UnsupportedModelError(f"{label}: the model could not be captured as a graph at input shape "
                                    f"{shape_text} ({_short(exc)})") from exc
    return buf.getvalue()


def _torch_runner(module: nn.Module) -> Any:
    """Runs the user's module (eval mode, its own dtype) on the float inputs: the lower bound's reference."""
    dtype = _dtype_of(module)

    def run(float_inputs: list[np.ndarray]) -> list[np.ndarray]:
        with _eval_mode(module), torch.no_grad():
            out = module(*(torch.as_tensor(np.asarray(x)).to(dtype) for x in float_inputs))
        flat: list[np.ndarray] = []

        def collect(o: Any) -> None:
            if isinstance(o, torch.Tensor):
                flat.append(o.detach().cpu().numpy())
            elif isinstance(o, Mapping):
                for v in o.values():
                    collect(v)
            elif isinstance(o, (list, tuple)):
                for v in o:
                    collect(v)

        collect(out)
        return flat

    return run


def _parametrization_dims(module: nn.Module) -> dict[str, int]:
    """The dim each spectral_norm / weight_norm of the module normalizes around, by module prefix."""
    dims: dict[str, int] = {}
    for name, m in module.named_modules():
        plist = getattr(getattr(m, "parametrizations", None), "weight", None)
        for p in plist.children() if plist is not None else ():  # children(): ScriptModules cannot iterate
            if hasattr(p, "dim") and isinstance(p.dim, int):
                dims[name] = p.dim
        for hook in getattr(m, "_forward_pre_hooks", {}).values():
            if type(hook).__name__ in ("SpectralNorm", "WeightNorm") and isinstance(getattr(hook, "dim", None), int):
                dims[name] = hook.dim
    return dims


def _audits(module: nn.Module) -> tuple[Any, ...]:
    from lipcheck.loaders.parametrizations import audit_inputs, find_parametrizations

    state = {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()
             if isinstance(v, torch.Tensor) and v.is_floating_point()}
    found = find_parametrizations(state, _parametrization_dims(module))
    return tuple(audit_inputs(p, state) for p in found)


def load_torch(model: Any, input_shape: InputShapes = None, options: TorchOptions | None = None) -> Graph:
    """Load a PyTorch model (a path, an nn.Module, a ScriptModule or an ExportedProgram) into the IR."""
    from lipcheck.loaders.onnx_loader import load_onnx

    options = options or TorchOptions()
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(model)
        loaded = _load_file(path, options)
    elif isinstance(model, nn.Module):
        label = f"<{type(model).__name__}>"
        loaded = _Loaded(model, "live nn.Module")
    elif type(model).__name__ == "ExportedProgram":
        label = "<ExportedProgram>"
        loaded = _from_exported_program(model)
    else:
        raise LoadError(f"cannot analyse an object of type {type(model).__name__}")
    names, shapes = _shapes(input_shape, loaded, label)
    notes = list(loaded.notes)
    with _eval_mode(loaded.module) as was_training:
        if was_training and loaded.kind in ("live nn.Module", "pickled nn.Module (--trust-pickle)"):
            notes.append("the module was in training mode: analysed in eval mode (BatchNorm running statistics, "
                         "no dropout); its mode is restored afterwards")
        data = export_onnx(loaded.module, names, shapes, label)
        audits = _audits(loaded.module)
    import onnx

    proto = onnx.load_from_string(data)
    proto.graph.name = Path(label).name if isinstance(model, (str, os.PathLike)) else type(loaded.module).__name__
    graph = load_onnx(proto, None)
    return dataclasses.replace(
        graph,
        source=label,
        notes=(f"loaded as a {loaded.kind}", *notes),
        parametrizations=audits,
        reference=_torch_runner(loaded.module),
    )


@contextlib.contextmanager
def _cwd_on_path() -> Iterator[None]:
    """Imports of the user's code resolve from the current folder too (as ``python -m`` would), for the call."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
