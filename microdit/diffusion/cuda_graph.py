"""The sampler's network calls replayed from one CUDA graph.

A sampler calls the denoiser 2N - 1 times on inputs of one shape. Each call launches a few thousand kernels, from
~35 compiled blocks and the eager glue between them; captured once as a CUDA graph, a call is one launch, with no
host work and no gaps between its kernels. What changes between calls (the state x and the noise level) is copied
into the graph's own input buffers; what stays (the weights, the caption context) is read where it lies, so the
graph is only valid within the sampling call that made it. One capture per sampling call: it synchronises the
device and traces one call on the host, and the graph's memory pool holds one call's activations meanwhile.
"""
import torch

from microdit.errors import UserError


def require_gpu(device: torch.device, setting: str) -> None:
    """Refuse CUDA graphs on another device before anything is loaded (`setting` names the option asking for them);
    `capture_cuda_graph` would only refuse once the first network call is due."""
    if device.type != "cuda":
        raise UserError(f"{setting}: CUDA graphs need a GPU, but the device is {device}")


def capture_cuda_graph(run, inputs: list[torch.Tensor]):
    """Run `run()`, which reads `inputs`, once on a side stream (the warm-up a capture needs: lazy initialisation,
    kernel tuning), then capture it into a CUDA graph. Returns (the warm-up's output, the graph's replay, the
    graph's output buffer).

    Under autocast, the captured glue reads the weights' low-precision copies from autocast's cache; those live
    until the caller's autocast exits, which is after the sampling call that owns the graph."""
    if not all(tensor.is_cuda for tensor in inputs):  # CPU work would run once at capture and never again
        raise ValueError(f"cuda_graph: needs CUDA tensors, got {[str(tensor.device) for tensor in inputs]}")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        first = run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    # thread_local: CUDA work of other threads (a loader's pinning, an image writer) is not this capture's error
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):
        output = run()
    return first, graph.replay, output


class GraphedCall:
    """`fn(*tensors) -> tensor` replayed from a CUDA graph after its first call, for inputs of the first call's
    shapes, dtypes and device. The first call runs `fn` (that is the capture's warm-up) and returns its result;
    each later one returns the graph's output buffer, which the next call overwrites: read it before calling
    again."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs: list[torch.Tensor] | None = None
        self.replay = self.output = None

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        if self.inputs is None:
            self.inputs = [arg.clone() for arg in args]  # the buffers the graph reads; later calls copy into them
            first, self.replay, self.output = capture_cuda_graph(lambda: self.fn(*self.inputs), self.inputs)
            return first
        for number, (buffer, arg) in enumerate(zip(self.inputs, args, strict=True)):
            if (buffer.shape, buffer.dtype, buffer.device) != (arg.shape, arg.dtype, arg.device):
                raise ValueError(f"cuda_graph: argument {number} is {tuple(arg.shape)} {arg.dtype} on {arg.device}; "
                                 f"the graph was captured for {tuple(buffer.shape)} {buffer.dtype} on {buffer.device}")
            buffer.copy_(arg)
        self.replay()
        return self.output
