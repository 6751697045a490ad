"""The Khronos ICD dispatch table's entries, in order, as <CL/cl_icd.h> lays them out.

Data: the generated ICD gives every entry it does not forward a stub that returns
CL_INVALID_OPERATION (or NULL for creating functions), so a call the loader routes
to us never jumps through a NULL pointer.  A test checks this against the installed
header (newer headers only append).
"""

DISPATCH = (
    'clGetPlatformIDs', 'clGetPlatformInfo', 'clGetDeviceIDs',
    'clGetDeviceInfo', 'clCreateContext', 'clCreateContextFromType',
    'clRetainContext', 'clReleaseContext', 'clGetContextInfo',
    'clCreateCommandQueue', 'clRetainCommandQueue', 'clReleaseCommandQueue',
    'clGetCommandQueueInfo', 'clSetCommandQueueProperty', 'clCreateBuffer',
    'clCreateImage2D', 'clCreateImage3D', 'clRetainMemObject',
    'clReleaseMemObject', 'clGetSupportedImageFormats', 'clGetMemObjectInfo',
    'clGetImageInfo', 'clCreateSampler', 'clRetainSampler',
    'clReleaseSampler', 'clGetSamplerInfo', 'clCreateProgramWithSource',
    'clCreateProgramWithBinary', 'clRetainProgram', 'clReleaseProgram',
    'clBuildProgram', 'clUnloadCompiler', 'clGetProgramInfo',
    'clGetProgramBuildInfo', 'clCreateKernel', 'clCreateKernelsInProgram',
    'clRetainKernel', 'clReleaseKernel', 'clSetKernelArg',
    'clGetKernelInfo', 'clGetKernelWorkGroupInfo', 'clWaitForEvents',
    'clGetEventInfo', 'clRetainEvent', 'clReleaseEvent',
    'clGetEventProfilingInfo', 'clFlush', 'clFinish',
    'clEnqueueReadBuffer', 'clEnqueueWriteBuffer', 'clEnqueueCopyBuffer',
    'clEnqueueReadImage', 'clEnqueueWriteImage', 'clEnqueueCopyImage',
    'clEnqueueCopyImageToBuffer', 'clEnqueueCopyBufferToImage', 'clEnqueueMapBuffer',
    'clEnqueueMapImage', 'clEnqueueUnmapMemObject', 'clEnqueueNDRangeKernel',
    'clEnqueueTask', 'clEnqueueNativeKernel', 'clEnqueueMarker',
    'clEnqueueWaitForEvents', 'clEnqueueBarrier', 'clGetExtensionFunctionAddress',
    'clCreateFromGLBuffer', 'clCreateFromGLTexture2D', 'clCreateFromGLTexture3D',
    'clCreateFromGLRenderbuffer', 'clGetGLObjectInfo', 'clGetGLTextureInfo',
    'clEnqueueAcquireGLObjects', 'clEnqueueReleaseGLObjects', 'clGetGLContextInfoKHR',
    'clGetDeviceIDsFromD3D10KHR', 'clCreateFromD3D10BufferKHR', 'clCreateFromD3D10Texture2DKHR',
    'clCreateFromD3D10Texture3DKHR', 'clEnqueueAcquireD3D10ObjectsKHR', 'clEnqueueReleaseD3D10ObjectsKHR',
    'clSetEventCallback', 'clCreateSubBuffer', 'clSetMemObjectDestructorCallback',
    'clCreateUserEvent', 'clSetUserEventStatus', 'clEnqueueReadBufferRect',
    'clEnqueueWriteBufferRect', 'clEnqueueCopyBufferRect', 'clCreateSubDevicesEXT',
    'clRetainDeviceEXT', 'clReleaseDeviceEXT', 'clCreateEventFromGLsyncKHR',
    'clCreateSubDevices', 'clRetainDevice', 'clReleaseDevice',
    'clCreateImage', 'clCreateProgramWithBuiltInKernels', 'clCompileProgram',
    'clLinkProgram', 'clUnloadPlatformCompiler', 'clGetKernelArgInfo',
    'clEnqueueFillBuffer', 'clEnqueueFillImage', 'clEnqueueMigrateMemObjects',
    'clEnqueueMarkerWithWaitList', 'clEnqueueBarrierWithWaitList', 'clGetExtensionFunctionAddressForPlatform',
    'clCreateFromGLTexture', 'clGetDeviceIDsFromD3D11KHR', 'clCreateFromD3D11BufferKHR',
    'clCreateFromD3D11Texture2DKHR', 'clCreateFromD3D11Texture3DKHR', 'clCreateFromDX9MediaSurfaceKHR',
    'clEnqueueAcquireD3D11ObjectsKHR', 'clEnqueueReleaseD3D11ObjectsKHR',
    'clGetDeviceIDsFromDX9MediaAdapterKHR',
    'clEnqueueAcquireDX9MediaSurfacesKHR', 'clEnqueueReleaseDX9MediaSurfacesKHR', 'clCreateFromEGLImageKHR',
    'clEnqueueAcquireEGLObjectsKHR', 'clEnqueueReleaseEGLObjectsKHR', 'clCreateEventFromEGLSyncKHR',
    'clCreateCommandQueueWithProperties', 'clCreatePipe', 'clGetPipeInfo',
    'clSVMAlloc', 'clSVMFree', 'clEnqueueSVMFree',
    'clEnqueueSVMMemcpy', 'clEnqueueSVMMemFill', 'clEnqueueSVMMap',
    'clEnqueueSVMUnmap', 'clCreateSamplerWithProperties', 'clSetKernelArgSVMPointer',
    'clSetKernelExecInfo', 'clGetKernelSubGroupInfoKHR', 'clCloneKernel',
    'clCreateProgramWithIL', 'clEnqueueSVMMigrateMem', 'clGetDeviceAndHostTimer',
    'clGetHostTimer', 'clGetKernelSubGroupInfo', 'clSetDefaultDeviceCommandQueue',
    'clSetProgramReleaseCallback', 'clSetProgramSpecializationConstant', 'clCreateBufferWithProperties',
    'clCreateImageWithProperties', 'clSetContextDestructorCallback',
)


def returns_pointer(name: str) -> bool:
    """Whether an entry returns an object or pointer (its stub returns NULL)."""
    if name in ("clCreateSubDevices", "clCreateSubDevicesEXT", "clCreateKernelsInProgram"):
        return False
    return name.startswith(("clCreate", "clLink", "clClone", "clEnqueueMap", "clSVMAlloc",
                            "clGetExtensionFunctionAddress"))
