"""Module names during capture: the stack of qualified names kept by global module hooks, each call of
a module numbered (the scope a drawing clusters by), and the names a trace finally gives module paths.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

__all__ = ["ModuleTracker", "rename_path"]


class ModuleTracker:
    """The qualified name of the module that is running, kept by global module hooks.

    Modules of a known root are named as ``root.named_modules()`` names them. A
    module first called outside any known module becomes a root itself: the
    first such root is named ``""`` when no root was given, later ones by their
    class name (``NLLLoss``), so a loss module does not merge into the model.
    """

    def __init__(self, root: nn.Module | None, on_root_call: Callable[[nn.Module, tuple[Any, ...]], None]) -> None:
        self.names: dict[int, str] = {}
        self.classes: dict[str, str] = {}
        self.roots: list[tuple[str, nn.Module]] = []
        self.notes: list[str] = []
        self._stack: list[str] = []
        #: Beside each entry of _stack, its scope: the path with repeated calls numbered (block#2.linear).
        self._scopes: list[str] = []
        self._calls: dict[str, int] = {}  # scope path without its own number -> calls so far this step
        self._on_root_call = on_root_call
        self._given = root is not None
        if root is not None:
            self._add_root(root, "")

    @property
    def current(self) -> str:
        return self._stack[-1] if self._stack else ""

    def _add_root(self, module: nn.Module, prefix: str) -> None:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module) and type(module).__name__ == "OptimizedModule":
            # torch.compile's wrapper: name the module it wraps, without the "_orig_mod." prefix.
            self.notes.append(
                f"{type(inner).__name__} was compiled with torch.compile; while traced it ran eagerly "
                "(TorchDynamo does not compile under a dispatch mode), so values are eager-mode values"
            )
            self.names[id(module)] = prefix
            module = inner
        self.roots.append((prefix, module))
        for name, sub in module.named_modules(prefix=prefix):
            self.names.setdefault(id(sub), name)
            self.classes.setdefault(name, type(sub).__name__)

    def _root_prefix(self, module: nn.Module) -> str:
        if not self.roots:
            return ""
        base = type(module).__name__
        taken = {p for p, _ in self.roots}
        prefix, n = base, 2
        while prefix in taken:
            prefix, n = f"{base}#{n}", n + 1
        return prefix

    def pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        name = self.names.get(id(module))
        if name is None:
            if self._stack:
                # A module made on the fly inside another: name it under its caller.
                name = f"{self._stack[-1]}.<{type(module).__name__}>".lstrip(".")
                self.names[id(module)] = name
                self.classes.setdefault(name, type(module).__name__)
            else:
                prefix = self._root_prefix(module)
                self._add_root(module, prefix)
                name = prefix
        if not self._stack:
            self._on_root_call(module, args)
        self._scopes.append(self._scope_of(name))
        self._stack.append(name)

    def _scope_of(self, name: str) -> str:
        """``name`` inside the calling module's scope, numbered when this is not its first call there."""
        parent = self._stack[-1] if self._stack else ""
        if parent and name.startswith(parent + "."):
            base = self._scopes[-1] + name[len(parent):]  # a submodule of a repeated call: block#2.linear
        else:
            base = name
        if not base:
            return base  # the model itself
        n = self._calls[base] = self._calls.get(base, 0) + 1
        return base if n == 1 else f"{base}#{n}"

    def reset_calls(self) -> None:
        """Number module calls afresh (a new training step begins)."""
        self._calls.clear()

    def post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._stack:
            self._stack.pop()
        if self._scopes:
            self._scopes.pop()

    def add_found_root(self, module: nn.Module) -> None:
        """A module whose parameters reached the graph without any call of it passing through
        module hooks (``net.forward(x)``): name its parameters and submodules under it."""
        if any(m is module for _, m in self.roots) or id(module) in self.names:
            return
        base = type(module).__name__
        taken = {p for p, _ in self.roots}
        prefix, n = base, 2
        while prefix in taken:
            prefix, n = f"{base}#{n}", n + 1
        self._add_root(module, prefix)

    def final_prefixes(self, used: set[int]) -> dict[str, str]:
        """Root prefix as recorded -> the prefix to show, given the ids of the parameters in the graph.

        Without a given model, roots are named in the order they are first called, so a transform
        or a second network called first would take the bare names (``""``) from the model. The
        model is the one root whose parameters the step used: it is shown bare, every other root
        under its class name. When several roots' parameters are in the graph (a GAN's generator
        step), each goes under its class name.
        """
        if self._given or not self.roots:
            return {}
        owners = [prefix for prefix, root in self.roots
                  if any(id(p) in used for p in root.parameters()) or any(id(p) in used for _, p in _fsdp_unsharded(root, prefix))]
        bare = owners[0] if len(owners) == 1 else None
        taken = {p for p, _ in self.roots if p}
        out: dict[str, str] = {}
        for prefix, root in self.roots:
            if prefix == bare:
                out[prefix] = ""
            elif prefix == "":
                base = type(root).__name__
                name, n = base, 2
                while name in taken:
                    name, n = f"{base}#{n}", n + 1
                taken.add(name)
                out[prefix] = name
        if not out:
            return {}
        return {prefix: out.get(prefix, prefix) for prefix, _ in self.roots}  # every root, to tell paths apart

    def named_parameters(self) -> dict[int, str]:
        """id(parameter) -> qualified name, over every root seen so far."""
        names: dict[int, str] = {}
        for prefix, root in self.roots:
            for name, p in root.named_parameters(prefix=prefix):
                names.setdefault(id(p), name)
            for name, p in _fsdp_unsharded(root, prefix):
                names.setdefault(id(p), name)
        return names


def _fsdp_unsharded(root: nn.Module, prefix: str) -> list[tuple[str, nn.Parameter]]:
    """FSDP2 (``fully_shard``) parameters as the autograd graph holds them: the unsharded parameter
    the forward used, under the name of the sharded one the module registers between steps."""
    out: list[tuple[str, nn.Parameter]] = []
    for path, module in root.named_modules(prefix=prefix):
        get_state = getattr(module, "_get_fsdp_state", None)
        if get_state is None:
            continue
        try:
            group = get_state()._fsdp_param_group
        except Exception:  # a private API: whatever changed in it, naming stays as without it
            continue
        for fsdp_param in getattr(group, "fsdp_params", None) or ():
            info = getattr(fsdp_param, "_module_info", None)
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if info is None or unsharded is None:
                continue
            owner = next((n for n, m in module.named_modules(prefix=path) if m is info.module), None)
            if owner is not None:
                out.append((f"{owner}.{info.param_name}" if owner else info.param_name, unsharded))
    return out


def rename_path(path: str, prefixes: dict[str, str]) -> str:
    """``path`` with its root prefix replaced as ``prefixes`` says (see ``ModuleTracker.final_prefixes``).

    >>> rename_path("Net.pool#2", {"Net": "", "": "Normalize"}), rename_path("", {"Net": "", "": "Normalize"})
    ('pool#2', 'Normalize')
    """
    if not prefixes:
        return path
    best = None
    for old in prefixes:
        if old and (path == old or path.startswith((old + ".", old + "#"))) and (best is None or len(old) > len(best)):
            best = old
    if best is None:
        if "" not in prefixes:
            return path
        best = ""
    new, rest = prefixes[best], path[len(best):]
    if not best:
        return new + ("." + rest if rest and new and not rest.startswith("#") else rest)
    rest = rest.lstrip(".") if not new else rest
    return new + rest
