/* Per-element arithmetic of the model inputs (PIPELINE.md, "Model inputs for frame i"). */
#ifndef GPUCOMP_PREPARE_CUH
#define GPUCOMP_PREPARE_CUH

#include "common.cuh"

/* u8 / 255 in float32 (IEEE division: no fast-math anywhere). */
GC_HD float gc_unit(gc_u8 v)
{
    return (float)v / 255.0f;
}

GC_HD int gc_in_mask(int y, int x)
{
    return x >= GC_MASK_X0 && x <= GC_MASK_X1 && y >= GC_MASK_Y0 && y <= GC_MASK_Y1;
}

/* The six channels of roi pixel (y, x): channels 0-2 the roi, 3-5 the roi with
 * the mouth rectangle zeroed. `visual` points at one frame's [6, 320, 320]. */
GC_HD void gc_visual_pixel(const gc_u8 *crop, float *visual, int y, int x)
{
    const gc_u8 *px = crop + ((y + GC_ROI_OFFSET) * GC_CROP + (x + GC_ROI_OFFSET)) * 3;
    int masked = gc_in_mask(y, x);
    int i = y * GC_ROI + x;
    for (int c = 0; c < 3; ++c) {
        float v = gc_unit(px[c]);
        visual[c * GC_ROI * GC_ROI + i] = v;
        visual[(c + 3) * GC_ROI * GC_ROI + i] = masked ? 0.0f : v;
    }
}

#endif
