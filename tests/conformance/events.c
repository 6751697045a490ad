#include "common.h"

int main(void)
{
    if (setup()) return 1;
    cl_int err = 0;
    cl_event e = clCreateUserEvent(NULL, &err); if (e) clReleaseEvent(e);
    CASE("CreateUserEvent(NULL context)", err);
    cl_event user = clCreateUserEvent(context, &err);
    CASE("CreateUserEvent(ok)", err);
    CASE("SetUserEventStatus(positive)", clSetUserEventStatus(user, 5));
    CASE("WaitForEvents(0, NULL)", clWaitForEvents(0, NULL));
    CASE("WaitForEvents(1, NULL)", clWaitForEvents(1, NULL));
    cl_event marker;
    CASE("EnqueueMarkerWithWaitList(user)", clEnqueueMarkerWithWaitList(queue, 1, &user, &marker));
    cl_int status;
    CASE("GetEventInfo(status)", clGetEventInfo(marker, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(status), &status, NULL));
    printf("%-48s %d\n", "  marker waiting on user event is complete", status == CL_COMPLETE);
    CASE("SetUserEventStatus(complete)", clSetUserEventStatus(user, CL_COMPLETE));
    CASE("SetUserEventStatus(twice)", clSetUserEventStatus(user, CL_COMPLETE));
    CASE("WaitForEvents(marker)", clWaitForEvents(1, &marker));
    cl_ulong t;
    CASE("GetEventProfilingInfo(no profiling)", clGetEventProfilingInfo(marker, CL_PROFILING_COMMAND_START, sizeof(t), &t, NULL));
    CASE("GetEventInfo(bad param)", clGetEventInfo(marker, 0x7777, 0, NULL, NULL));
    CASE("RetainEvent(NULL)", clRetainEvent(NULL));
    CASE("ReleaseEvent(marker)", clReleaseEvent(marker));
    CASE("ReleaseEvent(user)", clReleaseEvent(user));
    /* A negative execution status (any error code, which the spec allows): the command
     * waiting on it ends in error, and so does a wait for it. */
    cl_event failing = clCreateUserEvent(context, &err);
    CASE("CreateUserEvent(to fail)", err);
    cl_event blocked;
    CASE("EnqueueMarkerWithWaitList(failing)", clEnqueueMarkerWithWaitList(queue, 1, &failing, &blocked));
    CASE("SetUserEventStatus(CL_INVALID_VALUE)", clSetUserEventStatus(failing, CL_INVALID_VALUE));
    CASE("GetEventInfo(failed status)", clGetEventInfo(failing, CL_EVENT_COMMAND_EXECUTION_STATUS, sizeof(status), &status, NULL));
    printf("%-48s %d\n", "  user event status", status);
    CASE("SetUserEventStatus(after failing)", clSetUserEventStatus(failing, CL_COMPLETE));
    CASE("WaitForEvents(blocked by failed)", clWaitForEvents(1, &blocked) != CL_SUCCESS);
    cl_event minus = clCreateUserEvent(context, &err);
    CASE("SetUserEventStatus(-1)", clSetUserEventStatus(minus, -1));
    CASE("SetUserEventStatus(INT_MIN)", clSetUserEventStatus(minus, -2147483647 - 1));
    CASE("ReleaseEvent(blocked)", clReleaseEvent(blocked));
    CASE("ReleaseEvent(failing)", clReleaseEvent(failing));
    CASE("ReleaseEvent(minus)", clReleaseEvent(minus));
    CASE("EnqueueBarrierWithWaitList", clEnqueueBarrierWithWaitList(queue, 0, NULL, NULL));
    CASE("Finish", clFinish(queue));
    return 0;
}
