"""The ``Optimizer`` base class: parameter groups, state, hooks and state_dict.

This is fastoptim's own implementation of the protocol ``torch.optim.Optimizer``
defines.  The class *subclasses* ``torch.optim.Optimizer`` only so that
``isinstance(opt, torch.optim.Optimizer)`` holds everywhere in the PyTorch
ecosystem (LR schedulers, GradScaler, ZeroRedundancyOptimizer, distributed
checkpoint, Lightning, ...).  It never calls ``torch.optim.Optimizer.__init__``
and overrides every method that torch's base implements, so no behaviour is
inherited (see ``docs/design.md`` and ``../shared/notes``).

What an optimizer holds (the names are torch's, and so is the ``state_dict``
layout, so checkpoints move freely between the two libraries):

``defaults``
    the hyper-parameters given to the constructor; a group that does not set
    an option takes it from here.
``param_groups``
    a list of dicts, each with ``"params"`` (a list of tensors), every option,
    and ``"param_names"`` when the parameters were given as ``(name, tensor)``
    pairs.  Foreign keys (``initial_lr`` from a scheduler, ...) are kept.
``state``
    a ``defaultdict(dict)`` keyed by parameter tensor.
``_step_count``
    how many ``step()`` calls have completed.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Hashable, Iterable
from copy import deepcopy
from itertools import chain
from typing import Any

import torch
import torch.optim.optimizer as _torch_optimizer
from torch.utils.hooks import RemovableHandle

__all__ = [
    "Optimizer",
    "required",
    "register_optimizer_step_pre_hook",
    "register_optimizer_step_post_hook",
]

# The sentinel for "this option has no default: every group must give it".
# Shared with torch so that code written against torch.optim keeps working.
required = _torch_optimizer.required

# Global step hooks are torch's own registries: a hook registered through
# either library's ``register_optimizer_step_pre_hook`` fires for both
# libraries' optimizers, as profilers and memory trackers expect.
_global_pre_hooks = _torch_optimizer._global_optimizer_pre_hooks
_global_post_hooks = _torch_optimizer._global_optimizer_post_hooks

# Instance attributes that belong to a wrapper around the optimizer, never to
# the optimizer itself: an LR scheduler's patched ``step``, AMP's per-step
# attributes; and the kernels' tables of addresses (valid in this process
# only).  They are dropped when pickling or deep-copying.
_TRANSIENT_ATTRIBUTES = ("step", "_opt_called", "grad_scale", "found_inf", "_kernel_tables")

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


def register_optimizer_step_pre_hook(hook: Callable) -> RemovableHandle:
    """Register a pre-step hook for every optimizer (fastoptim's and torch's).

    ``hook(optimizer, args, kwargs)`` may return ``(new_args, new_kwargs)``.
    """
    handle = RemovableHandle(_global_pre_hooks)
    _global_pre_hooks[handle.id] = hook
    return handle


def register_optimizer_step_post_hook(hook: Callable) -> RemovableHandle:
    """Register a post-step hook ``hook(optimizer, args, kwargs)`` for every optimizer."""
    handle = RemovableHandle(_global_post_hooks)
    _global_post_hooks[handle.id] = hook
    return handle


def _disable_dynamo(fn: Callable) -> Callable:
    """Keep torch.compile from tracing bookkeeping methods (torch does the same).

    Eagerly, ``fn`` is called as it is: torch._dynamo is not imported.
    ``torch.compiler.disable`` imports it when it decorates (``import
    fastoptim`` took 1.6 s instead of 0.06), and torch.optim's own
    ``torch._disable_dynamo`` when the function is first called (the first
    ``step``); torch._dynamo is imported already when something is compiling.
    """
    disabled = _lazy_disable(fn)

    @functools.wraps(fn)
    def eager_unless_compiling(*args: Any, **kwargs: Any) -> Any:
        if torch.compiler.is_compiling():
            return disabled(*args, **kwargs)
        return fn(*args, **kwargs)

    return eager_unless_compiling


_lazy_disable = getattr(torch, "_disable_dynamo", torch.compiler.disable)


_stepping = threading.local()

_fast_range = getattr(getattr(torch._C, "_profiler", None), "_RecordFunctionFast", None)


def _profiler_range(name: str) -> Any:
    """The profiler range ``name`` (what ``torch.autograd.profiler.record_function`` opens).

    Eagerly it is torch's C++ ``_RecordFunctionFast``: the same event for
    profilers, but ``record_function`` goes through Python op dispatch, which
    costs 130-180 µs when a step's memory traffic has just evicted it from
    cache (measured: tools/step_phases.py).  Under torch.compile (dynamo
    knows ``record_function``) and under a ``TorchDispatchMode`` (``make_fx``
    traces the range as an op, as it does torch.optim's) it is
    ``record_function``.
    """
    if _fast_range is None or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return torch.autograd.profiler.record_function(name)
    return _fast_range(name)


@_disable_dynamo
def _count_step(optimizer: Any) -> None:
    """``_step_count += 1``, always run eagerly.

    Traced by torch.compile, the store was lost (dynamo drops attribute stores
    on an optimizer object when the traced step also mutates tensors), and a
    counter that dynamo reads is guarded on, which recompiles every step.
    The cost is one graph break at the end of a compiled step, as torch.optim
    has (its step is not ``fullgraph`` either).
    """
    optimizer._step_count = getattr(optimizer, "_step_count", 0) + 1


def _with_step_hooks(step: Callable) -> Callable:
    """Wrap a ``step`` method with the profiler range and the step hooks.

    Order, as in torch: global pre, instance pre, the update, the profiler's
    entry point, instance post, global post.  A nested call (a subclass's
    ``step`` calling ``super().step()``) runs the hooks only once.
    """

    @functools.wraps(step)
    def hooked_step(*args: Any, **kwargs: Any) -> Any:
        self = args[0]
        active = getattr(_stepping, "optimizers", None)
        if active is None:
            active = _stepping.optimizers = set()
        if id(self) in active:
            return step(*args, **kwargs)
        profile_name = f"Optimizer.step#{type(self).__name__}.step"
        with _profiler_range(profile_name):
            for pre_hook in chain(_global_pre_hooks.values(), self._optimizer_step_pre_hooks.values()):
                result = pre_hook(self, args, kwargs)
                if result is not None:
                    if isinstance(result, tuple) and len(result) == 2:
                        args, kwargs = result
                    else:
                        raise RuntimeError(
                            f"{step} must return None or a tuple of (new_args, new_kwargs), but got {result}."
                        )
            active.add(id(self))
            try:
                out = step(*args, **kwargs)
            finally:
                active.discard(id(self))
            _count_step(self)
            self._optimizer_step_code()
            for post_hook in chain(self._optimizer_step_post_hooks.values(), _global_post_hooks.values()):
                post_hook(self, args, kwargs)
            return out

    hooked_step._fastoptim_hooked = True  # type: ignore[attr-defined]
    return hooked_step


class Optimizer(torch.optim.Optimizer):
    """Base class of every fastoptim optimizer.

    Args:
        params: an iterable of tensors, of ``(name, tensor)`` pairs, or of
            dicts (parameter groups, each with its own options).
        defaults: the options a group takes when it does not set them.

    Subclasses implement ``step``; it is wrapped automatically with the step
    hooks and the profiler range, exactly as ``torch.optim`` does.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("step")
        if step is not None and not getattr(step, "_fastoptim_hooked", False):
            cls.step = _with_step_hooks(step)

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:  # noqa: D107
        torch._C._log_api_usage_once("python.optimizer")
        self.defaults = defaults
        self._init_hook_dicts()
        self._step_count = 0

        if isinstance(params, torch.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be "
                "an iterable of Tensors or dicts, but got " + torch.typename(params)
            )
        self.state: defaultdict[torch.Tensor, Any] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []

        param_groups = list(params)
        if len(param_groups) == 0:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(param_groups[0], dict):
            param_groups = [{"params": param_groups}]
        for param_group in param_groups:
            self.add_param_group(param_group)
        self._warned_capturable_if_run_uncaptured = True

    def _init_hook_dicts(self) -> None:
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._zero_grad_profile_name = f"Optimizer.zero_grad#{type(self).__name__}.zero_grad"

    # ------------------------------------------------------------------ pickling
    def __getstate__(self) -> dict[str, Any]:
        # Hooks are process-local callables; wrappers installed by schedulers
        # or GradScaler belong to their owners (a deep copy must not step the
        # original through a scheduler's weakref).
        skip = set(_HOOK_DICTS) | set(_TRANSIENT_ATTRIBUTES)
        return {k: v for k, v in self.__dict__.items() if k not in skip}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if not hasattr(self, "_optimizer_step_pre_hooks"):
            self._init_hook_dicts()
        self.__dict__.setdefault("_step_count", 0)
        self.defaults.setdefault("differentiable", False)

    def __repr__(self) -> str:
        # torch's layout, including the blank line that separates groups
        text = type(self).__name__ + " ("
        for index, group in enumerate(self.param_groups):
            text += f"\nParameter Group {index}\n"
            text += "".join(f"    {key}: {group[key]}\n" for key in sorted(group) if key != "params")
        return text + ")"

    # ------------------------------------------------------------------ hooks
    def _optimizer_step_code(self) -> None:
        """Entry point the PyTorch profiler's Python tracer keys on (a no-op)."""
        # The C++ tracer recognises torch's own function by its code object.
        _torch_optimizer.Optimizer._optimizer_step_code(self)

    def _register(self, registry_name: str, hook: Callable, prepend: bool = False) -> RemovableHandle:
        registry = getattr(self, registry_name)
        handle = RemovableHandle(registry)
        registry[handle.id] = hook
        if prepend:
            registry.move_to_end(handle.id, last=False)
        return handle

    def register_step_pre_hook(self, hook: Callable) -> RemovableHandle:
        """Call ``hook(optimizer, args, kwargs)`` before each step; it may return new ``(args, kwargs)``."""
        return self._register("_optimizer_step_pre_hooks", hook)

    def register_step_post_hook(self, hook: Callable) -> RemovableHandle:
        """Call ``hook(optimizer, args, kwargs)`` after each step."""
        return self._register("_optimizer_step_post_hooks", hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(optimizer)`` before ``state_dict()`` builds its result."""
        return self._register("_optimizer_state_dict_pre_hooks", hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(optimizer, state_dict)`` after; a returned dict replaces the result."""
        return self._register("_optimizer_state_dict_post_hooks", hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(optimizer, state_dict)`` before loading; a returned dict is loaded instead."""
        return self._register("_optimizer_load_state_dict_pre_hooks", hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False) -> RemovableHandle:
        """Call ``hook(optimizer)`` after ``load_state_dict()`` has loaded."""
        return self._register("_optimizer_load_state_dict_post_hooks", hook, prepend)

    # ------------------------------------------------------------------ groups
    @_disable_dynamo
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; options it leaves out are taken from ``defaults``.

        Raises ``ValueError`` if a parameter is already in another group or a
        required option is missing, ``TypeError`` for anything but tensors.
        The optimizer is unchanged when it raises.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group)}")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, torch.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but "
                "the ordering of tensors in sets will change between runs. Please use a list instead."
            )
        else:
            params = list(params)

        names = [p[0] for p in params if isinstance(p, tuple)]
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(tensors):
                raise ValueError("all optimizer params should be with/without names. Some param names are missing")
            group["param_names"] = names
        group["params"] = tensors

        for param in tensors:
            if not isinstance(param, torch.Tensor):
                raise TypeError("optimizer can only optimize Tensors, but one of the params is " + torch.typename(param))
            if not self.defaults.get("differentiable", None) and not (param.is_leaf or param.retains_grad):
                raise ValueError("can't optimize a non-leaf Tensor")

        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required optimization parameter {name}")
            group.setdefault(name, default)

        if len(tensors) != len(set(tensors)):
            warnings.warn(
                "optimizer contains a parameter group with duplicate parameters; "
                "in future, this will cause an error; "
                "see github.com/pytorch/pytorch/issues/40967 for more information",
                stacklevel=3,
            )

        seen: set[torch.Tensor] = set()
        for existing in self.param_groups:
            seen.update(existing["params"])
            if ("param_names" in group) != ("param_names" in existing):
                which = "with names" if "param_names" in group else "without names"
                raise ValueError(
                    f"all optimizer param groups should be with/without names. cannot add param group {which} to the optimizer"
                )
        if not seen.isdisjoint(tensors):
            raise ValueError("some parameters appear in more than one parameter group")

        # Mutate the caller's dict only once everything is valid (torch
        # normalises the dict it was given in place; we keep that, but never
        # leave it half-normalised).
        param_group.clear()
        param_group.update(group)
        self.param_groups.append(param_group)
        self._on_param_group_added(param_group)

    def _on_param_group_added(self, group: dict[str, Any]) -> None:
        """Subclass hook for optimizers that create state eagerly (Adagrad)."""

    @_disable_dynamo
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients: drop them (``set_to_none=True``) or fill them with zeros."""
        with _profiler_range(self._zero_grad_profile_name):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    if set_to_none:
                        p.grad = None
                        continue
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    # ------------------------------------------------------------------ state_dict
    @_disable_dynamo
    def state_dict(self) -> dict[str, Any]:
        """Return ``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``.

        Parameters are replaced by their position across all groups, exactly
        as torch.optim packs them, so the dict loads into either library.
        """
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        index_of: dict[int, int] = {}
        packed_groups = []
        start = 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            # A parameter repeated inside a group takes its *last* index there
            # (torch fills a group's mapping in one dict comprehension), and
            # the numbering still advances once per entry (torch's layout).
            index_of.update({id(p): index for index, p in enumerate(group["params"], start) if id(p) not in index_of})
            start += len(group["params"])
            packed["params"] = [index_of[id(p)] for p in group["params"]]
            packed_groups.append(packed)
        packed_state = {
            (index_of[id(k)] if isinstance(k, torch.Tensor) else k): v for k, v in self.state.items()
        }
        state_dict = {"state": packed_state, "param_groups": packed_groups}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def _cast_state_value(self, param: torch.Tensor, key: Hashable, value: Any, saved_group: dict) -> Any:
        """Move a loaded state value next to its parameter.

        Tensors follow the parameter's device, and its dtype when the
        parameter is floating point.  ``step`` keeps its own dtype (it is a
        float32/float64 counter), except for fused/capturable groups where it
        lives on the parameter's device as float32.
        """
        if isinstance(value, torch.Tensor):
            if key == "step":
                if saved_group.get("fused", False) or saved_group.get("capturable", False):
                    return value.to(dtype=torch.float32, device=param.device)
                return value
            if param.is_floating_point():
                return value.to(dtype=param.dtype, device=param.device)
            return value.to(device=param.device)
        if isinstance(value, dict):
            return {k: self._cast_state_value(param, k, v, saved_group) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self._cast_state_value(param, None, v, saved_group) for v in value)
        return value

    @_disable_dynamo
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict made by ``state_dict()`` (of either library).

        The saved hyper-parameters replace the current ones (a checkpoint's
        learning rate wins over the constructor's).  State is matched to
        parameters by position.  The dict is validated completely before
        anything changes: on error the optimizer is left as it was.
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise KeyError(f"loaded state dict is missing the key {key!r}")
        if not isinstance(state_dict["state"], dict) or not isinstance(state_dict["param_groups"], (list, tuple)):
            raise TypeError("loaded state dict must hold a dict under 'state' and a list of dicts under 'param_groups'")
        for index, saved in enumerate(state_dict["param_groups"]):
            if not isinstance(saved, dict) or "params" not in saved:
                raise ValueError(f"loaded state dict's param_groups[{index}] is not a dict with a 'params' list")

        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of optimizer's group")
        self._check_loaded_groups(saved_groups)

        saved_ids = list(chain.from_iterable(g["params"] for g in saved_groups))
        params = list(chain.from_iterable(g["params"] for g in groups))
        param_of = dict(zip(saved_ids, params))
        group_of = {}
        for saved_group in state_dict["param_groups"]:
            for pid in saved_group["params"]:
                group_of.setdefault(pid, saved_group)

        state: defaultdict[Any, dict] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            if key in param_of:
                param = param_of[key]
                state[param] = self._cast_state_value(param, None, value, group_of[key])
            else:
                state[key] = value
        self._check_loaded_state(state)
        self._check_loaded_state_keys(state_dict["state"], group_of)

        new_groups = []
        for group, saved in zip(groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            new_groups.append(saved)

        self.__setstate__({"state": state, "param_groups": new_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    # State entries that hold one value per element of the parameter; a
    # loaded tensor under one of these names must have the parameter's shape.
    _per_element_state: tuple[str, ...] = ()

    def _check_loaded_state(self, state: dict) -> None:
        """Reject loaded state whose element-wise buffers do not fit their parameter."""
        for param, entry in state.items():
            if not isinstance(param, torch.Tensor):
                continue
            if not isinstance(entry, dict):
                raise ValueError(f"loaded state of a parameter must be a dict, but got {type(entry).__name__}")
            for name in self._per_element_state:
                value = entry.get(name)
                if isinstance(value, torch.Tensor) and value.shape != param.shape:
                    raise ValueError(
                        f"loaded state {name!r} has shape {tuple(value.shape)}, "
                        f"but its parameter has shape {tuple(param.shape)}"
                    )

    # Options a loaded group may lack, beyond those ``__setstate__`` fills in
    # (found by _options_filled_by_setstate); a subclass may add to it.
    # ``maximize``: torch's SparseAdam reads it with a default, so its
    # checkpoints from before torch 1.13 lack it.
    _backfilled_options: frozenset[str] = frozenset({"maximize"})

    def _options_filled_by_setstate(self) -> frozenset[str]:
        """Options this class's ``__setstate__`` fills in when a loaded group lacks them.

        torch's algorithms (and ours, after them) fill in the options that
        torch added after 1.0, so that old checkpoints load.  Found by running
        ``__setstate__`` on a scratch instance with one empty group: the class
        says it itself, and nothing of this optimizer is touched.
        """
        cls = type(self)
        probe = cls.__new__(cls)
        probe.__dict__["defaults"] = dict(self.defaults)
        try:
            probe.__setstate__({"state": defaultdict(dict), "param_groups": [{"params": []}]})
            return frozenset(probe.param_groups[0]) - {"params"}
        except Exception:  # a __setstate__ that needs more than that: require nothing
            return frozenset(self.defaults)

    def _check_loaded_groups(self, saved_groups: list[dict]) -> None:
        """Reject loaded groups that lack an option this class needs (another class's state_dict)."""
        optional = self._backfilled_options | self._options_filled_by_setstate()
        # Only options that this optimizer's own groups carry are needed: torch's
        # Optimizer.__setstate__ (run by every load) adds "differentiable" to the
        # defaults of classes whose groups never had it (LBFGS, SparseAdam, ...).
        needed = [
            name for name in self.defaults if name not in optional and all(name in group for group in self.param_groups)
        ]
        for index, saved in enumerate(saved_groups):
            missing = [name for name in needed if name not in saved]
            if missing:
                raise ValueError(
                    f"loaded state dict's param_groups[{index}] has no {', '.join(map(repr, missing))}, which "
                    f"{type(self).__name__} needs: is it the state_dict of another optimizer class?"
                )

    def _check_loaded_state_keys(self, saved_state: dict, group_of: dict) -> None:
        """Reject a non-empty state entry that lacks what this class's first step creates.

        The keys are asked of the algorithm's ``_init_state`` (when it has
        one), once per group, on a one-element stand-in parameter: nothing of
        the real parameters' size is allocated.
        """
        init_state = getattr(self, "_init_state", None)
        if init_state is None:
            return
        needed: dict[int, frozenset] = {}
        for key, entry in saved_state.items():
            if key not in group_of or not isinstance(entry, dict) or not entry:
                continue
            group = group_of[key]
            if id(group) not in needed:
                stand_in = torch.zeros(1)
                stand_in.grad = torch.zeros(1)
                try:
                    needed[id(group)] = frozenset(init_state(stand_in, {**self.defaults, **group}))
                except Exception:  # an algorithm that cannot tell: check nothing
                    needed[id(group)] = frozenset()
            missing = sorted(needed[id(group)] - set(entry))
            if missing:
                raise ValueError(
                    f"loaded state of parameter {key!r} has no {', '.join(map(repr, missing))}, which {type(self).__name__} "
                    "keeps for every parameter it has stepped: is it the state_dict of another optimizer class?"
                )

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one optimisation step; ``closure`` re-evaluates the loss."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")
