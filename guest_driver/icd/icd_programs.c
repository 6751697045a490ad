/* Programs: build, compile and link with their notifications, and binaries, whose
 * query value is an array of the caller's pointers. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ava_icd.h"
#include "ava_icd_gen.h"
#include "icd_compose.h"

CL_API_ENTRY cl_int CL_API_CALL
ava_clBuildProgram(cl_program program, cl_uint num_devices, const cl_device_id *device_list,
                   const char *options, ava_program_notify pfn_notify, void *user_data)
{
    cl_int status = ava_fwd_clBuildProgram(program, num_devices, device_list, options, pfn_notify,
                                           user_data);
    if (pfn_notify && (status == CL_SUCCESS || status == CL_BUILD_PROGRAM_FAILURE))
        ava_notify_program(program, pfn_notify, user_data);
    return status;
}

CL_API_ENTRY cl_int CL_API_CALL
ava_clCompileProgram(cl_program program, cl_uint num_devices, const cl_device_id *device_list,
                     const char *options, cl_uint num_input_headers,
                     const cl_program *input_headers, const char **header_include_names,
                     ava_program_notify pfn_notify, void *user_data)
{
    cl_int status = ava_fwd_clCompileProgram(program, num_devices, device_list, options,
                                             num_input_headers, input_headers,
                                             header_include_names, pfn_notify, user_data);
    if (pfn_notify && (status == CL_SUCCESS || status == CL_COMPILE_PROGRAM_FAILURE))
        ava_notify_program(program, pfn_notify, user_data);
    return status;
}

CL_API_ENTRY cl_program CL_API_CALL
ava_clLinkProgram(cl_context context, cl_uint num_devices, const cl_device_id *device_list,
                  const char *options, cl_uint num_input_programs,
                  const cl_program *input_programs, ava_program_notify pfn_notify,
                  void *user_data, cl_int *errcode_ret)
{
    cl_program program = ava_fwd_clLinkProgram(context, num_devices, device_list, options,
                                               num_input_programs, input_programs, pfn_notify,
                                               user_data, errcode_ret);
    if (program && pfn_notify)
        ava_notify_program(program, pfn_notify, user_data);
    return program;
}

/* ---- program binaries ---------------------------------------------------------------- */

CL_API_ENTRY cl_int CL_API_CALL
ava_clGetProgramInfo(cl_program program, cl_program_info param_name, size_t param_value_size,
                     void *param_value, size_t *param_value_size_ret)
{
    if (param_name != CL_PROGRAM_BINARIES || !param_value)
        return ava_fwd_clGetProgramInfo(program, param_name, param_value_size, param_value,
                                        param_value_size_ret);
    /* The value is the caller's array of pointers: fetch each binary into its own. */
    size_t need = 0;
    cl_int status = ava_fwd_clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, 0, NULL, &need);
    if (status != CL_SUCCESS)
        return status;
    size_t n = need / sizeof(size_t);
    if (param_value_size < n * sizeof(unsigned char *))
        return CL_INVALID_VALUE;
    size_t *sizes = calloc(n ? n : 1, sizeof(size_t));
    if (!sizes)
        return CL_OUT_OF_HOST_MEMORY;
    status = ava_fwd_clGetProgramInfo(program, CL_PROGRAM_BINARY_SIZES, need, sizes, NULL);
    unsigned char **dst = param_value;
    for (size_t i = 0; status == CL_SUCCESS && i < n && i < AVA_PROGRAM_BINARY_MAX; i++)
        if (dst[i] && sizes[i])
            status = ava_fwd_clGetProgramInfo(program, (cl_program_info)(AVA_PROGRAM_BINARY + i),
                                              sizes[i], dst[i], NULL);
    free(sizes);
    if (status == CL_SUCCESS && param_value_size_ret)
        *param_value_size_ret = n * sizeof(unsigned char *);
    return status;
}
