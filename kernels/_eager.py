"""How an op call reaches its kernel: directly in eager mode, through torch.library when traced."""
from __future__ import annotations

import sys

import torch

# -----------------------------------------------------------------------------------------
# Dispatch: eager calls skip the torch.library dispatcher; traced calls go through the op.
# -----------------------------------------------------------------------------------------
# An empty custom op costs ~8 us per call and its Python autograd wrapper more; an
# autograd.Function ~2.4 us, a direct call nothing. Eager calls on plain tensors take the
# direct path (through an autograd.Function built from the op's own setup_context/backward
# when a gradient is needed). torch.compile, make_fx/AOTAutograd (dispatch modes), fake
# tensors, tensor subclasses and torch.func transforms see the registered custom op, so
# opcheck and torch.compile(fullgraph=True) keep tracing exactly what they did.

_PLAIN = (torch.Tensor, torch.nn.Parameter)


_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_level = torch._C._functorch.peek_interpreter_stack
_is_compiling = torch.compiler.is_compiling


def eager(t) -> bool:
    """True when `t` is a plain tensor in plain eager mode: a kernel may run directly."""
    return type(t) in _PLAIN and not _dispatch_modes() and _functorch_level() is None


DOUBLE_BACKWARD = (b"gptk: the backward of this op is not differentiable (its kernels run outside autograd); "
                   b"double backward / create_graph through it is not supported")


def once_differentiable(backward):
    """`backward` for an eager autograd.Function whose kernels run outside autograd: their
    results carry no graph. Under create_graph=True the results come back through a node that
    raises if reached, never as silently missing second-order terms. (PyTorch's
    @once_differentiable does so only when an incoming gradient needs a graph; a gradient
    penalty differentiates through the op's inputs instead, which are not always saved:
    linear_cross_entropy saves its gradients.)"""
    def wrapped(ctx, *grads):
        if not torch.is_grad_enabled():  # the common case: no graph of the backward
            return backward(ctx, *grads)
        with torch.no_grad():
            results = backward(ctx, *grads)
        single = not isinstance(results, tuple)
        results = (results,) if single else results
        fake = [None if r is None else r.detach().requires_grad_() for r in results]
        out = torch._C._functions.DelayedError(DOUBLE_BACKWARD, len(fake))(*fake)
        out = out if isinstance(out, tuple) else (out,)
        return out[0] if single else out
    return wrapped


def fast_op(custom_op, impl, setup_context=None, backward=None, register_autograd=True, inference=None,
            grad_impl=None):
    """The callable a backend exposes for `custom_op` (whose body is `impl`): the op under
    tracing, `impl` itself in eager mode, or an autograd.Function over `impl` with the op's
    own `setup_context`/`backward` when an input requires grad. With `register_autograd` the
    same pair is registered on the custom op (for the traced path). `inference`, if given,
    replaces `impl` in eager calls that record no gradient: it may skip what only the
    backward needs (returning None in those outputs' places). `grad_impl`, if given, replaces
    the autograd.Function in eager calls that record one: the same op with the same formulas
    as a C++ autograd node (csrc/eager.cpp), ~5 us cheaper per call."""
    if backward is None:
        def call(*args):
            if (_is_compiling() or type(args[0]) not in _PLAIN or _dispatch_modes()
                    or _functorch_level() is not None):
                return custom_op(*args)
            return impl(*args)
        return call

    def forward(ctx, *args):
        # The combined forward(ctx, ...) form: with a separate setup_context, Function.apply
        # binds default arguments through inspect.signature on every call (~3 us).
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    # Named after the op (gptk_<op>_<backend>_eager): autograd graphs read like the traced ones.
    op_name = getattr(custom_op, "_qualname", None) or custom_op.name()
    function = type(op_name.replace("::", "_").replace(".", "_") + "_eager", (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(once_differentiable(backward)),
    })
    apply = grad_impl or function.apply

    def call(*args):  # eager(args[0]) inline: this is every eager op call's path
        if (_is_compiling() or type(args[0]) not in _PLAIN or _dispatch_modes()
                or _functorch_level() is not None):
            return custom_op(*args)
        if torch.is_grad_enabled():
            for a in args:
                if type(a) in _PLAIN and a.requires_grad:
                    # grad_impl's C++ nodes have no compiled-autograd form; the Function has.
                    return function.apply(*args) if compiled_autograd_on() else apply(*args)
        return no_grad_impl(*args)

    no_grad_impl = inference or impl

    if register_autograd:
        custom_op.register_autograd(backward, setup_context=setup_context)
    return call


# -----------------------------------------------------------------------------------------
# Eager gradients of ops whose kernels launch from Python (the triton backend).
# -----------------------------------------------------------------------------------------
UNRESOLVED = object()


class PythonNode:
    """An autograd node for one op's eager gradient path, whose kernels run outside autograd.
    `empty_outputs(like, n_outputs, stats_rows)` allocates the forward's outputs in C++:
    `n_outputs` contiguous tensors shaped like `like`, then, when stats_rows >= 0, an fp32
    (stats_rows, 2) statistics buffer (~1 us cheaper per tensor than Python's allocations).
    After the kernels, `attach(outputs, inputs, saved)` makes `outputs` those of a C++ node
    (csrc/eager.cpp PythonBackward, named `<name>Backward` as a Function's node would be)
    over `inputs` that saves `saved`; in backward it calls `backward(needs_input_grad, saved,
    grads)`, which returns one gradient or None per input. `saved` is None when no gradient
    of an output in `saved_for` arrived (empty: always given): the saved tensors are then not
    unpacked, so a formula that passes a gradient straight through does not fail on a saved
    tensor changed in place or freed. Together ~7 us less per forward than an
    autograd.Function with Python allocations (no ctx object, no argument or output
    wrapping in Python).

    `attach` is UNRESOLVED until `resolve()`, then the bound C++ call, or None when the C++
    library is not loaded and would need a build to load: the caller then uses its
    autograd.Function, with the same formulas (the triton backend never starts a build).
    While compiled autograd is on, fast_op's call takes the op's Function instead
    (compiled_autograd_on): the C++ node has no compiled-autograd form."""
    __slots__ = ("name", "backward", "saved_for", "attach", "empty_outputs")

    def __init__(self, name: str, backward, saved_for=()):
        self.name, self.backward, self.saved_for = name, backward, tuple(saved_for)
        self.attach, self.empty_outputs = UNRESOLVED, None

    def resolve(self):
        import functools

        from . import cuda
        module = cuda.eager_module_if_built()
        if module is None or not hasattr(module, "attach"):  # not built, or an older build
            self.attach = None
        else:
            key = (self.name, self.backward, self.saved_for)
            if key not in _REGISTERED:  # once per formula: the library never frees one
                _REGISTERED[key] = module.register_backward(self.name + "Backward", self.backward,
                                                            list(self.saved_for))
            self.empty_outputs = module.empty_outputs
            self.attach = functools.partial(module.attach, _REGISTERED[key])
        return self.attach


_REGISTERED: dict = {}  # (name, backward, saved_for) -> the library's index of that formula


def compiled_autograd_on() -> bool:
    """Whether a backward may run under compiled autograd: torch._dynamo.config's flag (what
    torch.compile reads for the backward calls it compiles) or its enabled region. The C++
    nodes (csrc/eager.cpp) have no compiled-autograd form, so eager calls recording a
    gradient take a Python Function then (tests/test_host_path.py)."""
    global _COMPILED_AUTOGRAD_FLAG
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None:
        return False
    if _COMPILED_AUTOGRAD_FLAG is None:
        _COMPILED_AUTOGRAD_FLAG = _flag_reader(dynamo.config, "compiled_autograd")
    if _COMPILED_AUTOGRAD_FLAG():
        return True
    region = sys.modules.get("torch._dynamo.compiled_autograd")
    return bool(getattr(region, "compiled_autograd_enabled", False))


_COMPILED_AUTOGRAD_FLAG = None


def _flag_reader(config, name: str):
    """A reader of the flag config.<name> of a torch ConfigModule. torch keeps a user's value
    in a ContextVar per entry, read here directly (~0.1 us; the module's __getattr__ costs ~2
    us, on every op call recording a gradient). Any other layout, or a value that may come
    from an alias, an environment variable or a justknob, is read through the attribute."""
    import contextvars
    entry = getattr(config, "_config", {}).get(name)
    override = getattr(entry, "user_override", None)
    unset = getattr(sys.modules.get("torch.utils._config_module"), "_UNSET_SENTINEL", None)
    if (not isinstance(override, contextvars.ContextVar) or unset is None
            or getattr(entry, "alias", None) is not None or getattr(entry, "justknob", None) is not None
            or getattr(entry, "env_value_force", unset) is not unset
            or getattr(entry, "env_value_default", unset) is not unset):
        return lambda: bool(getattr(config, name))
    get, default = override.get, bool(entry.default)
    return lambda: default if (value := get()) is unset else bool(value)
