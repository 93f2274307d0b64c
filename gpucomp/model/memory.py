"""How much memory a model's activations take per frame of a batch, known
before the first run, so an oversized --batch is refused with the numbers
instead of growing until the kernel kills the process.

The estimate walks the graph in order with ONNX's shape inference: every
intermediate tensor (its size per frame: all but the batch axis) lives from
the node that makes it to the last node that reads it, and the largest sum of
live tensors is the graph's floor. ONNX Runtime takes a steady multiple of it
(its memory plan keeps buffers for reuse, convolutions add workspace):
measured on the CPU provider, as the growth of peak RSS from one run per
batch size, at batches 8-64 (onnxruntime 1.31.1, Xeon, 2 cores):

    UNet-328 width 0.25: floor 25.0 MiB/frame, measured 84.8-85.3 MiB/frame (3.39-3.41x)
    UNet-328 width 1:    floor 100 MiB/frame,  measured 321.7-324.8 MiB/frame (3.22-3.25x)

ACTIVATION_FACTOR is those ratios rounded up. On CUDA the same figure stands
for the provider's arena (which grows by doubling), cuDNN's workspaces
included, until measured there: the GPU engine records the device memory each
warm-up takes (cudaMemGetInfo around it, GpuBackend.warm_up_memory), and the
device script's speed run (benchmarks/gpu_speed.py) reports the growth from a
batch of 1 to a full batch per frame beside this estimate.
"""

from __future__ import annotations

from pathlib import Path

ACTIVATION_FACTOR = 3.5


def activation_floor(path: Path) -> int:
    """Bytes per frame of the most intermediate tensors alive at once (the
    inputs included); tensors whose shape is not known statically count 0."""
    import onnx
    from onnx import shape_inference

    model = shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False))
    graph = model.graph
    itemsize = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.DOUBLE: 8,
                onnx.TensorProto.INT64: 8, onnx.TensorProto.INT32: 4}

    def per_frame(value) -> int:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim[1:]
        if not tensor.HasField("shape") or any(d.dim_value <= 0 for d in dims):
            return 0
        count = 1
        for d in dims:
            count *= d.dim_value
        return count * itemsize.get(tensor.elem_type, 4)

    sizes = {v.name: per_frame(v) for v in [*graph.value_info, *graph.input, *graph.output]}
    last_read = {name: k for k, node in enumerate(graph.node) for name in node.input}
    outputs = {v.name for v in graph.output}
    live = {v.name: sizes.get(v.name, 0) for v in graph.input}
    peak = current = sum(live.values())
    for k, node in enumerate(graph.node):
        for name in node.output:
            live[name] = sizes.get(name, 0)
            current += live[name]
        peak = max(peak, current)
        for name in set(node.input):
            if name in live and last_read.get(name) == k and name not in outputs:
                current -= live.pop(name)
    return peak


def activation_bytes(per_frame_floor: int, batch: int) -> int:
    """Estimated bytes of the model's activations for a batch of `batch` frames."""
    return int(ACTIVATION_FACTOR * per_frame_floor * batch)
