/* What the ICD loader looks for: clIcdGetPlatformIDsKHR, clGetExtensionFunctionAddress,
 * and the dispatch table every object points at. */
#include <string.h>

#include "ava_icd.h"

struct _cl_icd_dispatch ava_dispatch;

CL_API_ENTRY cl_int CL_API_CALL ava_clGetPlatformIDs(cl_uint, cl_platform_id *, cl_uint *);
CL_API_ENTRY cl_int CL_API_CALL ava_clGetPlatformInfo(cl_platform_id, cl_platform_info, size_t,
                                                      void *, size_t *);

/* ocl-icd (Debian 12's 2.3.1) looks this symbol up in the ICD itself before using
 * the dispatch table, and drops an ICD that lacks it. */
CL_API_ENTRY cl_int CL_API_CALL
clGetPlatformInfo(cl_platform_id platform, cl_platform_info param_name, size_t param_value_size,
                  void *param_value, size_t *param_value_size_ret)
{
    return ava_clGetPlatformInfo(platform, param_name, param_value_size, param_value,
                                 param_value_size_ret);
}

CL_API_ENTRY cl_int CL_API_CALL
clIcdGetPlatformIDsKHR(cl_uint num_entries, cl_platform_id *platforms, cl_uint *num_platforms)
{
    cl_int status = ava_clGetPlatformIDs(num_entries, platforms, num_platforms);
    if (status == CL_OUT_OF_RESOURCES || status == CL_OUT_OF_HOST_MEMORY) {
        /* No device: tell the loader we have no platform rather than fail it. */
        if (num_platforms)
            *num_platforms = 0;
        return CL_PLATFORM_NOT_FOUND_KHR;
    }
    return status;
}

CL_API_ENTRY void *CL_API_CALL
clGetExtensionFunctionAddress(const char *name)
{
    if (name && strcmp(name, "clIcdGetPlatformIDsKHR") == 0)
        return (void *)clIcdGetPlatformIDsKHR;
    return NULL;
}

static CL_API_ENTRY void *CL_API_CALL
ava_clGetExtensionFunctionAddressForPlatform(cl_platform_id platform, const char *name)
{
    (void)platform;
    return clGetExtensionFunctionAddress(name);
}

__attribute__((constructor)) static void ava_icd_init(void)
{
    ava_icd_fill_dispatch(&ava_dispatch);
    ava_dispatch.clGetExtensionFunctionAddress = clGetExtensionFunctionAddress;
    ava_dispatch.clGetExtensionFunctionAddressForPlatform =
        ava_clGetExtensionFunctionAddressForPlatform;
}
