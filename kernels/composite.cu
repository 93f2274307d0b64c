/* Fused composite kernels: a whole batch per launch, 16 output bytes per thread.
 * grid.y is the frame of the batch, grid.x * block.x covers the frame's bytes. */
#include "composite.cuh"

#define GC_COMPOSITE_PARAMS                                                                        \
    const gc_u8 *__restrict__ full, const gc_u8 *__restrict__ crops, const float *__restrict__ pred, \
        const gc_frame *__restrict__ frames, const gc_tap *__restrict__ taps, gc_u8 *__restrict__ out,   \
        int first, int width, int feather, long long frame_bytes

/* The thread's byte offset is computed in 64 bits (2^27 threads x 16 bytes would
 * overflow int); once below frame_bytes (< 2^31, checked on the host) it fits in int. */
#define GC_COMPOSITE_SETUP                                                                         \
    gc_composite_args a = {full, crops, pred, frames, taps, first, width, feather, frame_bytes};        \
    int b = blockIdx.y;                                                                            \
    gc_i64 off64 = ((gc_i64)blockIdx.x * blockDim.x + threadIdx.x) * 16;                           \
    if (off64 >= frame_bytes)                                                                      \
        return;                                                                                    \
    int off = (int)off64;                                                                          \
    gc_frame_view v = gc_view(&a, b);                                                              \
    gc_u8 *dst = out + (gc_i64)b * frame_bytes + off;

/* frame_bytes % 16 == 0 (every common video size): one 16-byte load and one
 * 16-byte store per thread, in registers; only spans that touch the face do
 * per-byte work. */
extern "C" __global__ void gc_composite_vec16(GC_COMPOSITE_PARAMS)
{
    GC_COMPOSITE_SETUP
    uint4 word = __ldg((const uint4 *)(v.full + off));
    gc_span16 span = {{word.x, word.y, word.z, word.w}};
    gc_composite_span(&a, v, off, 16, &span);
    *(uint4 *)dst = make_uint4(span.w[0], span.w[1], span.w[2], span.w[3]);
}

/* Any frame size: the same spans, loaded and stored byte by byte. */
extern "C" __global__ void gc_composite_bytes(GC_COMPOSITE_PARAMS)
{
    GC_COMPOSITE_SETUP
    int n = frame_bytes - off < 16 ? (int)(frame_bytes - off) : 16;
    gc_span16 span = {{0u, 0u, 0u, 0u}};
    GC_UNROLL
    for (int i = 0; i < 16; ++i)
        if (i < n)
            gc_span_set(&span, i, v.full[off + i]);
    gc_composite_span(&a, v, off, n, &span);
    GC_UNROLL
    for (int i = 0; i < 16; ++i)
        if (i < n)
            dst[i] = (gc_u8)gc_span_get(&span, i);
}
