/* DMA memory: an arena of 2 MiB chunks (each physically contiguous) and a first-fit
 * allocator over it.  Rings and staging never cross a chunk; large buffers may, and
 * then travel as scatter lists. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rt_internal.h"

struct free_range {
    size_t off, size;
    struct free_range *next;
};

int rt_arena_init(struct ava_device *dev)
{
    pthread_mutex_init(&dev->alloc_lock, NULL);
    struct free_range *r = malloc(sizeof(*r));
    if (!r)
        return rt_error(ENOMEM, "out of memory setting up DMA arena");
    r->off = 0;
    r->size = dev->arena_size;
    r->next = NULL;
    dev->free = r;
    return 0;
}

void rt_arena_fini(struct ava_device *dev)
{
    struct free_range *r = dev->free;
    while (r) {
        struct free_range *n = r->next;
        free(r);
        r = n;
    }
    dev->free = NULL;
    free(dev->chunk_gpa);
    dev->chunk_gpa = NULL;
}

uint64_t rt_gpa(struct ava_device *dev, const void *ptr)
{
    size_t off = (size_t)((const uint8_t *)ptr - dev->base);
    return dev->chunk_gpa[off / CHUNK] + off % CHUNK;
}

/* Carve [off, off+size) out of the free list. */
static void *take(struct ava_device *dev, size_t size, size_t align, int contig)
{
    struct free_range **pp = &dev->free;
    for (; *pp; pp = &(*pp)->next) {
        struct free_range *r = *pp;
        size_t start = (r->off + align - 1) & ~(align - 1);
        if (contig && size <= CHUNK && start / CHUNK != (start + size - 1) / CHUNK)
            start = (start / CHUNK + 1) * CHUNK;
        if (start < r->off || start + size > r->off + r->size)
            continue;
        size_t end = start + size, rend = r->off + r->size;
        if (start > r->off && end < rend) {           /* split in two */
            struct free_range *tail = malloc(sizeof(*tail));
            if (!tail)
                return NULL;
            tail->off = end;
            tail->size = rend - end;
            tail->next = r->next;
            r->size = start - r->off;
            r->next = tail;
        } else if (start > r->off) {
            r->size = start - r->off;
        } else if (end < rend) {
            r->off = end;
            r->size = rend - end;
        } else {
            *pp = r->next;
            free(r);
        }
        return dev->base + start;
    }
    return NULL;
}

static void give_back(struct ava_device *dev, size_t off, size_t size)
{
    struct free_range **pp = &dev->free;
    while (*pp && (*pp)->off < off)
        pp = &(*pp)->next;
    struct free_range *next = *pp;
    /* merge with the previous range? find it */
    struct free_range *prev = NULL;
    for (struct free_range *r = dev->free; r && r != next; r = r->next)
        prev = r;
    if (prev && prev->off + prev->size == off) {
        prev->size += size;
        if (next && prev->off + prev->size == next->off) {
            prev->size += next->size;
            prev->next = next->next;
            free(next);
        }
        return;
    }
    if (next && off + size == next->off) {
        next->off = off;
        next->size += size;
        return;
    }
    struct free_range *n = malloc(sizeof(*n));
    if (!n)
        return;     /* leak the range rather than corrupt the list */
    n->off = off;
    n->size = size;
    n->next = next;
    *pp = n;
}

static size_t round_up(size_t n, size_t a)
{
    return (n + a - 1) & ~(a - 1);
}

void *rt_dma_alloc_contig(struct ava_device *dev, size_t size, uint64_t *gpa)
{
    if (size == 0 || size > CHUNK) {
        rt_error(EINVAL, "contiguous DMA allocation of %zu bytes (at most %u)", size, CHUNK);
        return NULL;
    }
    size = round_up(size, 64);
    pthread_mutex_lock(&dev->alloc_lock);
    void *p = take(dev, size, 64, 1);
    pthread_mutex_unlock(&dev->alloc_lock);
    if (!p) {
        rt_error(ENOMEM, "DMA memory exhausted (%zu bytes in the arena); hint: raise AVA_VDEV_MEM "
                 "or the number of reserved hugepages", dev->arena_size);
        return NULL;
    }
    memset(p, 0, size);
    *gpa = rt_gpa(dev, p);
    return p;
}

void rt_dma_free(struct ava_device *dev, void *ptr, size_t size)
{
    if (!ptr)
        return;
    size = round_up(size, 64);
    pthread_mutex_lock(&dev->alloc_lock);
    give_back(dev, (size_t)((uint8_t *)ptr - dev->base), size);
    pthread_mutex_unlock(&dev->alloc_lock);
}

struct buffer_priv {
    size_t size;             /* rounded */
    struct ava_sg_entry *sg;
    size_t sg_size;
};

struct ava_sg_entry *rt_arena_runs(struct ava_device *dev, const void *p, size_t size,
                                   uint32_t *count)
{
    size_t max_entries = size / CHUNK + 2;
    struct ava_sg_entry *sg = calloc(max_entries, sizeof(*sg));
    uint32_t n = 0;
    for (size_t done = 0; sg && done < size;) {
        size_t off = (size_t)((const uint8_t *)p - dev->base) + done;
        size_t run = CHUNK - off % CHUNK;
        if (run > size - done)
            run = size - done;
        rt_sg_add(sg, &n, rt_gpa(dev, dev->base + off), run);
        done += run;
    }
    *count = n;
    return sg;
}

int ava_buffer_alloc(struct ava_device *dev, size_t size, struct ava_buffer *out)
{
    memset(out, 0, sizeof(*out));
    if (size == 0)
        size = 1;
    size_t rounded = round_up(size, 4096);
    struct buffer_priv *priv = calloc(1, sizeof(*priv));
    if (!priv)
        return rt_error(ENOMEM, "out of memory");
    pthread_mutex_lock(&dev->alloc_lock);
    uint8_t *p = take(dev, rounded, 4096, rounded <= CHUNK);
    pthread_mutex_unlock(&dev->alloc_lock);
    if (!p) {
        free(priv);
        return rt_error(ENOMEM, "cannot allocate %zu bytes of DMA memory (arena %zu bytes); hint: "
                        "raise AVA_VDEV_MEM or the reserved hugepages", size, dev->arena_size);
    }
    uint32_t n = 0;
    struct ava_sg_entry *tmp = rt_arena_runs(dev, p, size, &n);
    uint64_t sg_gpa = 0;
    struct ava_sg_entry *sg = tmp ? rt_dma_alloc_contig(dev, n * sizeof(*sg), &sg_gpa) : NULL;
    if (!sg) {
        free(tmp);
        free(priv);
        pthread_mutex_lock(&dev->alloc_lock);
        give_back(dev, (size_t)(p - dev->base), rounded);
        pthread_mutex_unlock(&dev->alloc_lock);
        return rt_error(ENOMEM, "cannot allocate the scatter list of a %zu-byte buffer", size);
    }
    memcpy(sg, tmp, n * sizeof(*sg));
    free(tmp);
    priv->size = rounded;
    priv->sg = sg;
    priv->sg_size = n * sizeof(*sg);
    out->ptr = p;
    out->size = size;
    out->nsg = n;
    out->sg_gpa = sg_gpa;
    out->gpa = n == 1 ? sg[0].addr : 0;
    out->priv = priv;
    return 0;
}

void ava_buffer_free(struct ava_device *dev, struct ava_buffer *buf)
{
    struct buffer_priv *priv = buf->priv;
    if (!priv)
        return;
    rt_dma_free(dev, priv->sg, priv->sg_size);
    pthread_mutex_lock(&dev->alloc_lock);
    give_back(dev, (size_t)((uint8_t *)buf->ptr - dev->base), priv->size);
    pthread_mutex_unlock(&dev->alloc_lock);
    free(priv);
    memset(buf, 0, sizeof(*buf));
}
