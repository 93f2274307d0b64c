/* The fused composite kernel: a whole batch per launch, 16 output bytes per thread.
 * grid.y is the frame of the batch, grid.x * block.x covers the largest frame's
 * bytes; each frame's descriptor says where its pixels and its output lie, so
 * frames of different avatars and sizes share the launch. */
#include "composite.cuh"

/* 16-byte loads and stores need the frame's size and both of its buffers
 * aligned to 16 (every common video size; the host aligns outputs to 256). */
__device__ __forceinline__ int gc_vectorizable(const gc_frame *f)
{
    return ((f->frame_bytes | (gc_i64)f->full | (gc_i64)f->out) & 15) == 0;
}

/* The thread's byte offset is computed in 64 bits (2^27 threads x 16 bytes would
 * overflow int); once below frame_bytes (< 2^31, checked on the host) it fits in int. */
extern "C" __global__ void gc_composite(const gc_frame *__restrict__ frames, const float *__restrict__ pred)
{
    gc_frame_view v = gc_view(frames, pred, blockIdx.y);
    gc_i64 frame_bytes = v.f->frame_bytes;
    gc_i64 off64 = ((gc_i64)blockIdx.x * blockDim.x + threadIdx.x) * 16;
    if (off64 >= frame_bytes)
        return;
    int off = (int)off64;
    const gc_u8 *src = v.f->full + off;
    gc_u8 *dst = v.f->out + off;
    if (gc_vectorizable(v.f)) {
        /* One 16-byte load and one 16-byte store, in registers; only spans
         * that touch the face do per-byte work. */
        uint4 word = __ldg((const uint4 *)src);
        gc_span16 span = {{word.x, word.y, word.z, word.w}};
        gc_composite_span(v, off, 16, &span);
        *(uint4 *)dst = make_uint4(span.w[0], span.w[1], span.w[2], span.w[3]);
        return;
    }
    /* Any other size: the same spans, loaded and stored byte by byte. */
    int n = frame_bytes - off < 16 ? (int)(frame_bytes - off) : 16;
    gc_span16 span = {{0u, 0u, 0u, 0u}};
    GC_UNROLL
    for (int i = 0; i < 16; ++i)
        if (i < n)
            gc_span_set(&span, i, src[i]);
    gc_composite_span(v, off, n, &span);
    GC_UNROLL
    for (int i = 0; i < 16; ++i)
        if (i < n)
            dst[i] = (gc_u8)gc_span_get(&span, i);
}
