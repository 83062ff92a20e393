"""Taking a network elsewhere: ONNX files and PyTorch modules, both ways for PyTorch.

A fastbp network is a chain of dense layers ``z = W a + b``, ``a = f(z)``; both formats say the same
with one node (module) per product and one per activation, the identity being no node at all:

    ONNX     Gemm(input, W, b, transB=1) -> Sigmoid / Tanh / Relu / LeakyRelu(0.01) / Softmax(-1)
                                            (float64: PRelu(0.01) for LeakyRelu, see EXACT_SLOPE)
    PyTorch  Linear(n_in, n_out)         -> Sigmoid / Tanh / ReLU / LeakyReLU(0.01) / Softmax(-1)

``W`` is used as stored, ``(n_out, n_in)``: it is ONNX's ``B`` transposed by Gemm and exactly
torch's ``Linear.weight``. Neither ``onnx`` nor ``torch`` is needed to import fastbp; each is
imported here on first use (``pip install 'fastbp[onnx]'``, ``'fastbp[torch]'``).
"""
import json

import numpy as np

from .version import __version__
from .kernels.codes import LEAKY_SLOPE

# fastbp activation -> (ONNX operator, its attributes, torch.nn module, its arguments); None is the
# identity. from_torch accepts a module whose arguments hold one of the values listed (to_torch
# writes the first).
ACTIVATIONS = {
    "identity": None,
    "sigmoid": ("Sigmoid", {}, "Sigmoid", {}),
    "tanh": ("Tanh", {}, "Tanh", {}),
    "relu": ("Relu", {}, "ReLU", {}),
    "leaky_relu": ("LeakyRelu", {"alpha": LEAKY_SLOPE},
                   "LeakyReLU", {"negative_slope": (LEAKY_SLOPE,)}),
    # dim 1 is the last axis of the (batch, features) inputs a network takes
    "softmax": ("Softmax", {"axis": -1}, "Softmax", {"dim": (-1, 1)}),
}
_BY_MODULE = {spec[2]: name for name, spec in ACTIVATIONS.items() if spec is not None}

# ONNX attributes are float32: LeakyRelu's alpha is float32(0.01), as fastbp's float32 slope, but
# not float64's 0.01 (2e-10 apart, relative), so a float64 network writes PRelu with a float64
# slope instead.
EXACT_SLOPE = "PRelu"

# Opset 17: onnxruntime has float64 kernels for every operator above (1.32 has none for LeakyRelu
# from opset 19 on). IR version 8, opset 17's own, rather than the newest: older runtimes read it.
OPSET = 17
IR_VERSION = 8


def _require(module, extra):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(f"this needs the {module} package: pip install "
                          f"'fastbp[{extra}]'") from None


def _layers(net):
    """(W, b, activation) per layer, output layer last."""
    n = len(net.weights)
    return [(W, b, net.output_activation if l == n - 1 else net.activation)
            for l, (W, b) in enumerate(zip(net.weights, net.biases))]


# --------------------------------------------------------------------------- ONNX

def onnx_model(net):
    """The network as an ``onnx.ModelProto``: input ``input`` (batch, layer_sizes[0]) and output
    ``output`` (batch, layer_sizes[-1]) in the network's dtype, the batch axis dynamic."""
    onnx = _require("onnx", "onnx")
    from onnx import helper, numpy_helper

    element = helper.np_dtype_to_tensor_dtype(net.dtype)
    nodes, initializers, current = [], [], "input"
    layers = _layers(net)
    for l, (W, b, activation) in enumerate(layers):
        last = l == len(layers) - 1
        spec = ACTIVATIONS[activation]
        z = "output" if last and spec is None else f"z{l + 1}"
        initializers += [numpy_helper.from_array(np.array(W), f"W{l + 1}"),
                         numpy_helper.from_array(np.array(b), f"b{l + 1}")]
        nodes.append(helper.make_node("Gemm", [current, f"W{l + 1}", f"b{l + 1}"], [z], transB=1,
                                      name=f"dense{l + 1}"))
        current = z
        if spec is not None:
            a = "output" if last else f"a{l + 1}"
            if activation == "leaky_relu" and net.dtype == np.float64:
                if "leaky_slope" not in [tensor.name for tensor in initializers]:
                    initializers.append(numpy_helper.from_array(np.array([LEAKY_SLOPE]),
                                                                "leaky_slope"))
                node = helper.make_node(EXACT_SLOPE, [z, "leaky_slope"], [a])
            else:
                node = helper.make_node(spec[0], [z], [a], **spec[1])
            node.name = f"{activation}{l + 1}"
            nodes.append(node)
            current = a
    graph = helper.make_graph(
        nodes, "fastbp_network",
        [helper.make_tensor_value_info("input", element, ["batch", net.layer_sizes[0]])],
        [helper.make_tensor_value_info("output", element, ["batch", net.layer_sizes[-1]])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastbp", producer_version=__version__,
                              doc_string=repr(net))
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"fastbp_config": json.dumps(net.config())})
    onnx.checker.check_model(model)
    return model


def to_onnx(net, path):
    """Write the network to an ONNX file at `path` (see ``onnx_model``); returns the ModelProto."""
    onnx = _require("onnx", "onnx")
    model = onnx_model(net)
    onnx.save(model, path)
    return model


# --------------------------------------------------------------------------- PyTorch

def to_torch(net):
    """The network as a ``torch.nn.Sequential`` of Linear and activation modules, in its dtype."""
    torch = _require("torch", "torch")
    dtype = {"float32": torch.float32, "float64": torch.float64}[net.dtype.name]
    modules = []
    for W, b, activation in _layers(net):
        linear = torch.nn.Linear(W.shape[1], W.shape[0], dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(W)))
            linear.bias.copy_(torch.from_numpy(np.array(b)))
        modules.append(linear)
        spec = ACTIVATIONS[activation]
        if spec is not None:
            arguments = {key: values[0] for key, values in spec[3].items()}
            modules.append(getattr(torch.nn, spec[2])(**arguments))
    return torch.nn.Sequential(*modules)


def read_torch(module, loss=None):
    """What ``fastbp.from_torch`` builds a Network from: (the Network's arguments, the weights, the
    biases) of a ``torch.nn.Sequential`` of Linear and activation modules; raises as it does."""
    torch = _require("torch", "torch")

    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch reads a torch.nn.Sequential of Linear and activation modules, "
                        f"got {type(module).__name__}")
    layers = []  # [Linear, its index, activation name, the activation's index]
    for index, child in enumerate(module):
        kind = type(child).__name__
        where = f"layer {index} ({kind})"
        if type(child) is torch.nn.Linear:
            if child.bias is None:
                raise ValueError(f"{where} has no bias; fastbp layers always have one")
            if layers and child.in_features != layers[-1][0].out_features:
                raise ValueError(f"{where} takes {child.in_features} inputs, but the layer before "
                                 f"gives {layers[-1][0].out_features}")
            layers.append([child, index, "identity", None])
        elif type(child) is torch.nn.Identity:
            continue
        elif kind in _BY_MODULE and getattr(torch.nn, kind) is type(child):
            if not layers:
                raise ValueError(f"{where} comes before any Linear layer")
            if layers[-1][3] is not None:
                raise ValueError(f"{where} follows another activation (layer {layers[-1][3]}); "
                                 f"fastbp has one activation per layer")
            name = _BY_MODULE[kind]
            for argument, accepted in ACTIVATIONS[name][3].items():
                value = getattr(child, argument)
                if value not in accepted:
                    raise ValueError(f"{where} has {argument}={value}; fastbp's {name} has "
                                     f"{argument}={accepted[0]}"
                                     + (f" (or {accepted[1]})" if len(accepted) > 1 else ""))
            layers[-1][2:] = [name, index]
        else:
            raise ValueError(f"{where} is not a layer fastbp has: it reads Linear, Sigmoid, Tanh, "
                             f"ReLU, LeakyReLU(0.01), Softmax(dim=-1) and Identity")
    if not layers:
        raise ValueError("the Sequential has no Linear layer")
    hidden = layers[:-1]
    for number, (_, index, name, at) in enumerate(hidden, 1):
        where = (f"layer {at} ({type(module[at]).__name__})" if at is not None else
                 f"layer {index} (Linear, with no activation after it)")
        if name == "softmax":
            raise ValueError(f"{where} is on hidden layer {number}; fastbp has softmax on the "
                             f"output layer only")
        if name != hidden[0][2]:
            raise ValueError(f"{where} makes hidden layer {number} {name}, but hidden layer 1 is "
                             f"{hidden[0][2]}; fastbp's hidden layers share one activation")
    output = layers[-1][2]
    activation = hidden[0][2] if hidden else ("sigmoid" if output == "softmax" else output)
    dtypes = {p.dtype for layer, *_ in layers for p in (layer.weight, layer.bias)}
    if len(dtypes) > 1 or not dtypes <= {torch.float32, torch.float64}:
        raise ValueError(f"the parameters are {', '.join(sorted(map(str, dtypes)))}; fastbp takes "
                         f"float32 or float64 throughout (convert with module.float() or "
                         f"module.double())")
    dtype = "float64" if dtypes == {torch.float64} else "float32"
    if loss is None:
        loss = "cross_entropy" if output == "softmax" else "mse"
    sizes = [layers[0][0].in_features] + [layer.out_features for layer, *_ in layers]
    config = dict(layer_sizes=sizes, activation=activation, output_activation=output, loss=loss,
                  dtype=dtype)
    return (config, [layer.weight.detach().cpu().numpy() for layer, *_ in layers],
            [layer.bias.detach().cpu().numpy() for layer, *_ in layers])
