/* Fused composite kernels: a whole batch per launch, 16 output bytes per thread.
 * grid.y is the frame of the batch, grid.x * block.x covers the frame's bytes. */
#include "composite.cuh"

#define GC_COMPOSITE_PARAMS                                                                        \
    const gc_u8 *__restrict__ full, const gc_u8 *__restrict__ crops, const float *__restrict__ pred, \
        const gc_frame *__restrict__ frames, const gc_tap *__restrict__ taps, gc_u8 *__restrict__ out,   \
        int first, int slots, int width, int feather, long long frame_bytes

#define GC_COMPOSITE_SETUP                                                                         \
    gc_composite_args a = {full, crops, pred, frames, taps, first, slots, width, feather, frame_bytes}; \
    int b = blockIdx.y;                                                                            \
    int off = (blockIdx.x * blockDim.x + threadIdx.x) * 16;                                         \
    if (off >= frame_bytes)                                                                        \
        return;                                                                                    \
    gc_frame_view v = gc_view(&a, b);                                                              \
    gc_u8 *dst = out + (gc_i64)b * frame_bytes + off;

/* frame_bytes % 16 == 0 (every common video size): one 16-byte load and store
 * per thread; only spans that touch the face do per-byte work. */
extern "C" __global__ void gc_composite_vec16(GC_COMPOSITE_PARAMS)
{
    GC_COMPOSITE_SETUP
    union {
        uint4 word;
        gc_u8 bytes[16];
    } span;
    span.word = __ldg((const uint4 *)(v.full + off));
    gc_composite_span(&a, v, off, 16, span.bytes);
    *(uint4 *)dst = span.word;
}

/* Any frame size: the same spans, loaded and stored byte by byte. */
extern "C" __global__ void gc_composite_bytes(GC_COMPOSITE_PARAMS)
{
    GC_COMPOSITE_SETUP
    int n = frame_bytes - off < 16 ? (int)(frame_bytes - off) : 16;
    gc_u8 bytes[16];
    for (int i = 0; i < n; ++i)
        bytes[i] = v.full[off + i];
    gc_composite_span(&a, v, off, n, bytes);
    for (int i = 0; i < n; ++i)
        dst[i] = bytes[i];
}
