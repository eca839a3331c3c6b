# libtorch from the torch wheel, without find_package(Torch): the CUDA wheel's TorchConfig
# needs the CUDA toolkit even to build CPU code. We link the wheel's libraries directly;
# whether CUDA is used is decided at run time (torch::cuda::is_available()).
equiformer_python_lines(_out "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)")
if(NOT _out)
  message(FATAL_ERROR "torch is not importable with ${EQUIFORMER_PYTHON}. The C++ build compiles "
    "against the torch of the Python environment it installs into: install torch there, and with "
    "pip build without isolation (pip install --no-build-isolation .; an isolated build environment has no torch)")
endif()
list(GET _out 0 TORCH_ROOT)
list(GET _out 1 TORCH_CXX11_ABI)
list(GET _out 2 TORCH_VERSION_STRING)
set(TORCH_LIB_DIR ${TORCH_ROOT}/lib)
# another torch (an upgrade) re-runs this configuration: its version is compiled into the plugins
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${TORCH_ROOT}/version.py)
message(STATUS "equiformer: torch ${TORCH_VERSION_STRING} at ${TORCH_ROOT} (cxx11 abi ${TORCH_CXX11_ABI})")

option(EQUIFORMER_WITH_CUDA "link libtorch_cuda when the wheel has it (needs no CUDA toolkit)" ON)
set(_torch_libs ${TORCH_LIB_DIR}/libtorch.so ${TORCH_LIB_DIR}/libtorch_cpu.so ${TORCH_LIB_DIR}/libc10.so)
set(EQUIFORMER_TORCH_CUDA OFF)
if(EQUIFORMER_WITH_CUDA AND EXISTS ${TORCH_LIB_DIR}/libtorch_cuda.so)
  set(EQUIFORMER_TORCH_CUDA ON)
  list(APPEND _torch_libs ${TORCH_LIB_DIR}/libtorch_cuda.so)
  if(EXISTS ${TORCH_LIB_DIR}/libc10_cuda.so)
    list(APPEND _torch_libs ${TORCH_LIB_DIR}/libc10_cuda.so)
  endif()
endif()
message(STATUS "equiformer: libtorch CUDA support linked: ${EQUIFORMER_TORCH_CUDA}")

add_library(equiformer_torch INTERFACE)
add_library(equiformer::torch ALIAS equiformer_torch)
target_include_directories(equiformer_torch SYSTEM INTERFACE
  ${TORCH_ROOT}/include ${TORCH_ROOT}/include/torch/csrc/api/include)
target_compile_definitions(equiformer_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=${TORCH_CXX11_ABI})
# --no-as-needed keeps libtorch_cuda loaded although no symbol of it is referenced:
# it registers the CUDA backend that torch::cuda::is_available() asks.
target_link_libraries(equiformer_torch INTERFACE "-Wl,--no-as-needed" ${_torch_libs} "-Wl,--as-needed")
set(EQUIFORMER_TORCH_RPATH ${TORCH_LIB_DIR})
