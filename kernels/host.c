/* Host build of the kernels for the gpu-sim backend: the same per-element
 * functions as the CUDA wrappers, driven by plain loops over the same spans
 * and the same frame descriptors. Compiled by gpucomp/engine/kernel_build.py
 * with the system C compiler. */
#include "composite.cuh"
#include "prepare.cuh"

/* sizeof(gc_frame), checked against the NumPy mirror before any launch. */
int gc_host_frame_size(void)
{
    return (int)sizeof(gc_frame);
}

void gc_host_composite(const gc_frame *frames, const float *pred, int batch)
{
    for (int b = 0; b < batch; ++b) {
        gc_frame_view v = gc_view(frames, pred, b);
        gc_i64 frame_bytes = v.f->frame_bytes;
        for (int off = 0; off < frame_bytes; off += 16) {
            int n = frame_bytes - off < 16 ? (int)(frame_bytes - off) : 16;
            gc_span16 span = {{0u, 0u, 0u, 0u}};
            for (int i = 0; i < n; ++i)
                gc_span_set(&span, i, v.f->full[off + i]);
            gc_composite_span(v, off, n, &span);
            for (int i = 0; i < n; ++i)
                v.f->out[off + i] = (gc_u8)gc_span_get(&span, i);
        }
    }
}

void gc_host_prepare_visual(const gc_frame *frames, float *visual, int batch)
{
    for (int b = 0; b < batch; ++b)
        for (int i = 0; i < GC_ROI * GC_ROI; ++i)
            gc_visual_pixel(frames[b].crop, visual + (gc_i64)b * 6 * GC_ROI * GC_ROI, i / GC_ROI, i % GC_ROI);
}
