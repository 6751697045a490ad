/* Buffer transfers larger than the process's DMA memory can stage at once.
 *
 * A transfer the device cannot reach in place (an ordinary user's, a non-blocking
 * one, any over loopback) is copied through DMA staging, and an ordinary user's
 * DMA memory is 32 MiB by default: a 64 MiB clEnqueueWriteBuffer would fail with
 * CL_OUT_OF_RESOURCES where native OpenCL succeeds.  So a transfer larger than a
 * quarter of the DMA memory goes as several commands on the same queue, each a piece
 * of the whole, one after another: the first carries the caller's wait list, each
 * later one waits for the one before (an out-of-order queue keeps them in order too),
 * and the caller's event is the last one's (its command type is the transfer's; its
 * profiling times are the last piece's).  A blocking transfer returns when the last
 * piece is done; a non-blocking one keeps each piece's staging until that piece is
 * seen over (icd_deferred.c).
 *
 * A blocking transfer that could lend its pages in place goes whole; if the pin is
 * refused after all (an ordinary user's RLIMIT_MEMLOCK, too scattered a range,
 * read-only memory) and its staging does not fit, it was not sent, and goes again in
 * pieces, each of which may lend its own pages.
 *
 * What the whole would be refused for, the first piece is refused for too (the same
 * queue, buffer, wait list and host access), except bounds, which the guest checks
 * for the whole first: a transfer past the buffer's end goes whole, as before, and
 * gets the implementation's answer. */
#include <stdint.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"

typedef cl_int (*transfer_fn)(cl_command_queue, cl_mem, cl_bool, size_t, size_t, void *,
                              cl_uint, const cl_event *, cl_event *);

static cl_int fwd_read(cl_command_queue q, cl_mem b, cl_bool blocking, size_t offset,
                       size_t size, void *ptr, cl_uint n, const cl_event *wait, cl_event *ev)
{
    return ava_fwd_clEnqueueReadBuffer(q, b, blocking, offset, size, ptr, n, wait, ev);
}

static cl_int fwd_write(cl_command_queue q, cl_mem b, cl_bool blocking, size_t offset,
                        size_t size, void *ptr, cl_uint n, const cl_event *wait, cl_event *ev)
{
    return ava_fwd_clEnqueueWriteBuffer(q, b, blocking, offset, size, ptr, n, wait, ev);
}

/* Whether the transfer goes in pieces: larger than a piece, not lent in place, and
 * within the buffer (as far as the guest knows it). */
static size_t piece_for(cl_mem buffer, cl_bool blocking, size_t offset, size_t size,
                        const void *ptr, int lending)
{
    size_t piece = ava_transport_piece_limit();
    size_t whole = ava_mem_buffer_size(buffer);
    if (!ptr || size <= piece || (lending && blocking && ava_transport_may_lend(size)) ||
        !whole || offset > whole || size > whole - offset)
        return 0;
    return piece;
}

static cl_int in_pieces(transfer_fn fn, size_t piece, cl_command_queue queue, cl_mem buffer,
                        cl_bool blocking, size_t offset, size_t size, uint8_t *ptr,
                        cl_uint num_events, const cl_event *wait_list, cl_event *event)
{
    cl_event before = NULL;
    cl_int status = CL_SUCCESS;
    for (size_t pos = 0; pos < size && status == CL_SUCCESS; pos += piece) {
        size_t n = size - pos < piece ? size - pos : piece;
        int last = pos + n == size;
        cl_event mine = NULL;
        status = fn(queue, buffer, blocking, offset + pos, n, ptr + pos,
                    pos ? (before ? 1 : 0) : num_events, pos ? &before : wait_list,
                    last && !event ? NULL : &mine);
        if (before) {           /* a non-blocking piece's staging stays with its command */
            ava_clReleaseEvent(before);
            before = NULL;
        }
        if (status == CL_SUCCESS && last && event)
            *event = mine;
        else if (status == CL_SUCCESS && !last)
            before = mine;
    }
    return status;
}

/* Whole, lent in place or staged; in pieces where it is larger than a piece and not
 * lent (or its pin was refused and the whole did not fit its staging). */
static cl_int transfer(transfer_fn fn, cl_command_queue queue, cl_mem buffer, cl_bool blocking,
                       size_t offset, size_t size, void *ptr, cl_uint num_events,
                       const cl_event *wait_list, cl_event *event)
{
    size_t piece = piece_for(buffer, blocking, offset, size, ptr, 1);
    if (piece)
        return in_pieces(fn, piece, queue, buffer, blocking, offset, size, ptr, num_events,
                         wait_list, event);
    ava_lend_fell_short = 0;
    cl_int status = fn(queue, buffer, blocking, offset, size, ptr, num_events, wait_list, event);
    if (status == CL_OUT_OF_RESOURCES && ava_lend_fell_short &&
        (piece = piece_for(buffer, blocking, offset, size, ptr, 0)) != 0)
        status = in_pieces(fn, piece, queue, buffer, blocking, offset, size, ptr, num_events,
                           wait_list, event);
    return status;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clEnqueueReadBuffer(cl_command_queue queue, cl_mem buffer, cl_bool blocking, size_t offset,
                        size_t size, void *ptr, cl_uint num_events, const cl_event *wait_list,
                        cl_event *event)
{
    return transfer(fwd_read, queue, buffer, blocking, offset, size, ptr, num_events,
                    wait_list, event);
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clEnqueueWriteBuffer(cl_command_queue queue, cl_mem buffer, cl_bool blocking,
                         size_t offset, size_t size, const void *ptr, cl_uint num_events,
                         const cl_event *wait_list, cl_event *event)
{
    return transfer(fwd_write, queue, buffer, blocking, offset, size, (void *)ptr, num_events,
                    wait_list, event);
}
