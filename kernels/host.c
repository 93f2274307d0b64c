/* Host build of the kernels for the gpu-sim backend: the same per-element
 * functions as the CUDA wrappers, driven by plain loops in the same spans.
 * Compiled by gpucomp/kernel_build.py with the system C compiler. */
#include "composite.cuh"
#include "prepare.cuh"

void gc_host_composite(const gc_u8 *full, const gc_u8 *crops, const float *pred, const gc_frame *frames,
                       const gc_tap *taps, gc_u8 *out, int first, int batch, int width, int feather,
                       long long frame_bytes)
{
    gc_composite_args a = {full, crops, pred, frames, taps, first, width, feather, frame_bytes};
    for (int b = 0; b < batch; ++b) {
        gc_frame_view v = gc_view(&a, b);
        gc_u8 *dst = out + (gc_i64)b * frame_bytes;
        for (int off = 0; off < frame_bytes; off += 16) {
            int n = frame_bytes - off < 16 ? (int)(frame_bytes - off) : 16;
            gc_span16 span = {{0u, 0u, 0u, 0u}};
            for (int i = 0; i < n; ++i)
                gc_span_set(&span, i, v.full[off + i]);
            gc_composite_span(&a, v, off, n, &span);
            for (int i = 0; i < n; ++i)
                dst[off + i] = (gc_u8)gc_span_get(&span, i);
        }
    }
}

void gc_host_prepare_visual(const gc_u8 *crops, const gc_frame *frames, float *visual, int first, int batch)
{
    for (int b = 0; b < batch; ++b) {
        gc_i64 slot = frames[first + b].slot;
        for (int i = 0; i < GC_ROI * GC_ROI; ++i)
            gc_visual_pixel(crops + slot * (GC_CROP * GC_CROP * 3), visual + (gc_i64)b * 6 * GC_ROI * GC_ROI,
                            i / GC_ROI, i % GC_ROI);
    }
}

void gc_host_prepare_audio(const float *features, int rows, float *audio, int first_index, int batch)
{
    for (int b = 0; b < batch; ++b)
        for (int e = 0; e < GC_AUDIO_WINDOW * GC_FEATURE_DIM; ++e)
            audio[(gc_i64)b * GC_AUDIO_WINDOW * GC_FEATURE_DIM + e] = gc_audio_value(features, rows, first_index + b, e);
}
