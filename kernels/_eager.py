"""How an op call reaches its kernel: directly in eager mode, through torch.library when traced."""
from __future__ import annotations

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
                    return apply(*args)
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
    (csrc/eager.cpp PythonBackward) over `inputs` that saves `saved`; in backward it calls
    `backward(needs_input_grad, saved, grads)`, which returns one gradient or None per input.
    Together ~7 us less per forward than an autograd.Function with Python allocations (no
    ctx object, no argument or output wrapping in Python).

    `attach` is UNRESOLVED until `resolve()`, then the bound C++ call, or None when the C++
    library is not loaded and would need a build to load (the caller then uses its
    autograd.Function, with the same formulas): the triton backend never starts a build."""
    __slots__ = ("name", "backward", "attach", "empty_outputs")

    def __init__(self, name: str, backward):
        self.name, self.backward, self.attach, self.empty_outputs = name, backward, UNRESOLVED, None

    def resolve(self):
        import functools

        from . import cuda
        module = cuda.eager_module_if_built()
        if module is None or not hasattr(module, "attach"):  # not built, or an older build
            self.attach = None
        else:
            self.empty_outputs = module.empty_outputs
            self.attach = functools.partial(module.attach, module.register_backward(self.name, self.backward))
        return self.attach
