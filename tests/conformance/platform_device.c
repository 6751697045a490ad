#include "common.h"

int main(void)
{
    if (setup()) return 1;
    cl_uint n;
    char buf[64];
    size_t sz;
    CASE("GetPlatformIDs(0, non-NULL, NULL)", clGetPlatformIDs(0, &platform, NULL));
    CASE("GetPlatformIDs(0, NULL, NULL)", clGetPlatformIDs(0, NULL, NULL));
    CASE("GetPlatformInfo(bad param)", clGetPlatformInfo(platform, 0x7777, sizeof(buf), buf, NULL));
    CASE("GetPlatformInfo(size too small)", clGetPlatformInfo(platform, CL_PLATFORM_NAME, 1, buf, NULL));
    CASE("GetPlatformInfo(size query)", clGetPlatformInfo(platform, CL_PLATFORM_NAME, 0, NULL, &sz));
    CASE("GetDeviceIDs(bad type)", clGetDeviceIDs(platform, 0, 1, &device, &n));
    CASE("GetDeviceIDs(accelerator only)", clGetDeviceIDs(platform, CL_DEVICE_TYPE_CUSTOM, 1, &device, &n));
    CASE("GetDeviceIDs(0 entries, non-NULL)", clGetDeviceIDs(platform, CL_DEVICE_TYPE_ALL, 0, &device, NULL));
    CASE("GetDeviceInfo(NULL device)", clGetDeviceInfo(NULL, CL_DEVICE_NAME, sizeof(buf), buf, NULL));
    CASE("GetDeviceInfo(bad param)", clGetDeviceInfo(device, 0x7777, sizeof(buf), buf, NULL));
    CASE("GetDeviceInfo(size too small)", clGetDeviceInfo(device, CL_DEVICE_NAME, 1, buf, NULL));
    CASE("RetainDevice(NULL)", clRetainDevice(NULL));
    CASE("ReleaseDevice(root)", clReleaseDevice(device));
    return 0;
}
