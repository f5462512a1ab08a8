"""The triton backend: one module per op (softmax.py, layer_norm.py, attention.py, gelu_linear.py).

Each module holds the whole op in one order: what it fuses and its roofline, the
kernels, the launchers with their block-size choice, then the torch.library
registration with fake impl and autograd. kernels._backend finds an op by module
name; an op whose module is absent is reported as not implemented.
"""
