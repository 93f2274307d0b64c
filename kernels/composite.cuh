/* Per-byte arithmetic of the fused composite (PIPELINE.md, "Composite for frame i").
 *
 * An output byte is either the cached full-body byte or, inside the visible
 * part of the rectangle, the cv2-exact bilinear sample of the 328 template,
 * whose centre 320x320 comes from trunc(clamp(pred * 255)). Nothing is staged in
 * an intermediate buffer: the template is read where it lies (prediction or
 * crop) for each of the four taps.
 */
#ifndef GPUCOMP_COMPOSITE_CUH
#define GPUCOMP_COMPOSITE_CUH

#include "common.cuh"

/* uint8(trunc(clamp(p * 255))) with a float32 product; NaN -> 0 (fmaxf drops NaN). */
GC_HD int gc_pred_to_u8(float p)
{
    float v = p * 255.0f;
    v = fminf(fmaxf(v, 0.0f), 255.0f);
    return (int)v;
}

/* Template pixel (r, c), channel ch: the prediction inside [4, 324), the crop outside. */
GC_HD int gc_template(const float *pred, const gc_u8 *crop, int r, int c, int ch)
{
    int pr = r - GC_ROI_OFFSET, pc = c - GC_ROI_OFFSET;
    if ((unsigned)pr < (unsigned)GC_ROI && (unsigned)pc < (unsigned)GC_ROI)
        return gc_pred_to_u8(pred[(ch * GC_ROI + pr) * GC_ROI + pc]);
    return crop[(r * GC_CROP + c) * 3 + ch];
}

/* cv2.resize INTER_LINEAR on uint8, exactly: horizontal pass in int32, then
 * the vertical pass with OpenCV's >>4, >>16, +2, >>2 rounding. */
GC_HD int gc_bilinear(const float *pred, const gc_u8 *crop, gc_tap xt, gc_tap yt, int ch)
{
    int h0 = gc_template(pred, crop, yt.s0, xt.s0, ch) * xt.c0 + gc_template(pred, crop, yt.s0, xt.s1, ch) * xt.c1;
    int h1 = gc_template(pred, crop, yt.s1, xt.s0, ch) * xt.c0 + gc_template(pred, crop, yt.s1, xt.s1, ch) * xt.c1;
    int v = (((yt.c0 * (h0 >> 4)) >> 16) + ((yt.c1 * (h1 >> 4)) >> 16) + 2) >> 2;
    return v < 0 ? 0 : (v > 255 ? 255 : v);
}

/* Feather weight /256 of face pixel (dx, dy): a ramp over `feather` pixels
 * inside the rectangle edge (gpucomp.core.contract.feather_alpha). */
GC_HD int gc_feather_alpha(const gc_frame *f, int dx, int dy, int feather)
{
    int w = f->x2 - f->x1, h = f->y2 - f->y1;
    int d = dx < w - 1 - dx ? dx : w - 1 - dx;
    int e = dy < h - 1 - dy ? dy : h - 1 - dy;
    d = d < e ? d : e;
    return d >= feather ? GC_ALPHA_ONE : (d + 1) * GC_ALPHA_ONE / (feather + 1);
}

/* Batch frame b: its descriptor and its prediction. */
typedef struct {
    const gc_frame *f;
    const float *pred;  /* [3, 320, 320] */
    int feather;        /* the frame's, read once: 0: the exact contract */
} gc_frame_view;

GC_HD gc_frame_view gc_view(const gc_frame *frames, const float *pred, int b)
{
    gc_frame_view v;
    v.f = &frames[b];
    v.pred = pred + (gc_i64)b * 3 * GC_ROI * GC_ROI;
    v.feather = v.f->feather;
    return v;
}

/* 1 when bytes [off, off + n) of the frame lie wholly outside the visible
 * face, so the cached bytes are the output. Conservative: a span over two
 * rows is decided byte by byte. Offsets within a frame fit in int: the host
 * refuses frames of 2^31 bytes or more. */
GC_HD int gc_span_outside(const gc_frame *f, int off, int n)
{
    int width = f->width;
    int p0 = off / 3, p1 = (off + n - 1) / 3;
    int y0 = p0 / width, y1 = p1 / width;
    if (y1 < f->vy1 || y0 >= f->vy2)
        return 1;
    if (y0 != y1)
        return 0;
    int x0 = p0 - y0 * width, x1 = p1 - y0 * width;
    return x1 < f->vx1 || x0 >= f->vx2;
}

/* 16 consecutive bytes held as four little-endian 32-bit words. Bytes are
 * read and written with shifts at indices that are constants once the span
 * loop is unrolled, so on the device the span lives in registers (a byte
 * array indexed in a loop would go to local memory). */
typedef struct {
    unsigned int w[4];
} gc_span16;

GC_HD int gc_span_get(const gc_span16 *s, int i)
{
    return (int)((s->w[i >> 2] >> ((i & 3) * 8)) & 0xffu);
}

GC_HD void gc_span_set(gc_span16 *s, int i, int v)
{
    int shift = (i & 3) * 8;
    s->w[i >> 2] = (s->w[i >> 2] & ~(0xffu << shift)) | ((unsigned int)v << shift);
}

/* Output byte at pixel (x, y), channel ch, given the cached byte `orig`. */
GC_HD int gc_output_byte(gc_frame_view v, int x, int y, int ch, int orig)
{
    const gc_frame *f = v.f;
    if (x < f->vx1 || x >= f->vx2 || y < f->vy1 || y >= f->vy2)
        return orig;
    int dx = x - f->x1, dy = y - f->y1;
    int out = gc_bilinear(v.pred, f->crop, f->taps[f->xtab + dx], f->taps[f->ytab + dy], ch);
    if (v.feather > 0) {
        int alpha = gc_feather_alpha(f, dx, dy, v.feather);
        out = (out * alpha + orig * (GC_ALPHA_ONE - alpha) + 128) >> 8;
    }
    return out;
}

/* Composite the first n (<= 16) bytes of the span starting at byte `off` of
 * one frame, in place: `span` holds the cached full-body bytes on entry and
 * the output on return. */
GC_HD void gc_composite_span(gc_frame_view v, int off, int n, gc_span16 *span)
{
    if (gc_span_outside(v.f, off, n))
        return;
    int width = v.f->width;
    int p = off / 3;
    int ch = off - p * 3;
    int y = p / width;
    int x = p - y * width;
    GC_UNROLL
    for (int i = 0; i < 16; ++i) {
        if (i < n)
            gc_span_set(span, i, gc_output_byte(v, x, y, ch, gc_span_get(span, i)));
        if (++ch == 3) {
            ch = 0;
            if (++x == width) {
                x = 0;
                ++y;
            }
        }
    }
}

#endif
