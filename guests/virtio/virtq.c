/*
 * Split virtqueues, driver side (VIRTIO 1.2 section 2.7): chains of
 * descriptors (direct or through an indirect table, 2.7.5.3), the available
 * ring, kicks, and a polled used ring with bounded waits.
 *
 * Ordering: x86 keeps stores in order and loads in order, so compiler
 * barriers are enough between filling descriptors and publishing avail->idx
 * and between reading used->idx and the used element.
 */
#include "virtio.h"

static int alloc_chain(struct virtq *q, int n)
{
    if (n < 1 || q->num_free < n)
        return -1;
    int head = q->free_head, last = head;
    for (int i = 1; i < n; i++)
        last = q->desc[last].next;
    q->free_head = q->desc[last].next;
    q->num_free -= n;
    return head;
}

static void publish(struct virtq *q, int head, void *token, int ndesc)
{
    q->token[head] = token;
    q->chain_len[head] = ndesc;
    q->avail->ring[q->avail_idx & (q->size - 1)] = head;
    barrier();
    q->avail_idx++;
    q->avail->idx = q->avail_idx;
    barrier();
}

int virtq_add(struct virtq *q, const struct vbuf *bufs, int n, void *token)
{
    int head = alloc_chain(q, n);
    if (head < 0)
        return -1;
    int i = head;
    for (int k = 0; k < n; k++) {
        struct virtq_desc *dsc = &q->desc[i];
        dsc->addr = (u64)bufs[k].addr;
        dsc->len = bufs[k].len;
        dsc->flags = (bufs[k].flags & VBUF_WRITE ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        /* desc.next already links the free list in order */
        i = dsc->next;
    }
    publish(q, head, token, n);
    return head;
}

int virtq_add_indirect(struct virtq *q, const struct vbuf *bufs, int n, void *token)
{
    if (!(q->dev->features & VIRTIO_F_INDIRECT_DESC) || n > VIRTQ_INDIRECT_MAX)
        return virtq_add(q, bufs, n, token);
    int head = alloc_chain(q, 1);
    if (head < 0)
        return -1;
    struct virtq_desc *t = q->indirect[head];
    for (int k = 0; k < n; k++) {
        t[k].addr = (u64)bufs[k].addr;
        t[k].len = bufs[k].len;
        t[k].flags = (bufs[k].flags & VBUF_WRITE ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        t[k].next = k + 1;
    }
    struct virtq_desc *dsc = &q->desc[head];
    dsc->addr = (u64)t;
    dsc->len = n * sizeof(struct virtq_desc);
    dsc->flags = VIRTQ_DESC_F_INDIRECT;
    publish(q, head, token, 1);
    return head;
}

void virtq_kick(struct virtq *q)
{
    barrier();
    if (q->dev->transport == VIRTIO_MMIO)
        mmio_write32(q->notify, q->index);
    else
        mmio_write16(q->notify, q->index);
}

u16 virtq_pending_used(struct virtq *q)
{
    return (u16)(*(volatile u16 *)&q->used->idx - q->last_used);
}

void *virtq_get(struct virtq *q, u32 *len)
{
    if (!virtq_pending_used(q))
        return NULL;
    barrier();
    struct virtq_used_elem e = *(volatile struct virtq_used_elem *)&q->used->ring[q->last_used & (q->size - 1)];
    q->last_used++;
    if (len)
        *len = e.len;
    u32 head = e.id;
    if (head >= q->size || !q->chain_len[head]) {
        printf("virtio: queue %u: device returned bad id %u\n", q->index, head);
        return NULL;
    }
    /* put the chain back on the free list */
    int n = q->chain_len[head], last = head;
    for (int i = 1; i < n; i++)
        last = q->desc[last].next;
    q->desc[last].next = q->free_head;
    q->free_head = head;
    q->num_free += n;
    q->chain_len[head] = 0;
    void *tok = q->token[head];
    q->token[head] = NULL;
    return tok;
}

void *virtq_wait(struct virtq *q, u32 *len, u32 timeout_ms)
{
    u64 end = deadline_ms(timeout_ms);
    for (;;) {
        if (virtq_pending_used(q))
            return virtq_get(q, len);
        if (expired(end))
            return NULL;
        pause();
    }
}
