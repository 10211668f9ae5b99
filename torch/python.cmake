# The Python module `onebit`: the pybind11 extension onebit._onebit, built for ONEBIT_PYTHON (the
# interpreter that imports torch), staged with the pure-Python package in <build>/python, installed
# with `cmake --install <build> --component python`.
set(Python3_EXECUTABLE "${ONEBIT_PYTHON}")
find_package(Python3 COMPONENTS Interpreter Development.Module)
# Prefer the pybind11 that torch ships (pip wheels), so the extension shares pybind11's type
# registry with torch._C; Debian's torch uses the system pybind11 under /usr/include.
execute_process(COMMAND "${ONEBIT_PYTHON}" -c "import pybind11; print(pybind11.get_include())"
                WORKING_DIRECTORY "${PROJECT_BINARY_DIR}" OUTPUT_VARIABLE _onebit_pybind11_hint OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
find_path(ONEBIT_PYBIND11_INCLUDE pybind11/pybind11.h HINTS ${TORCH_INCLUDE_DIRS} ${_onebit_pybind11_hint})
# torch._C's pybind11 ABI tags: the extension must use the same to see torch's ProcessGroup type
# (torch.utils.cpp_extension passes these three to every extension for the same reason).
execute_process(COMMAND "${ONEBIT_PYTHON}" -c
                "import torch; c = torch._C; print(';'.join([c._PYBIND11_COMPILER_TYPE, c._PYBIND11_STDLIB, c._PYBIND11_BUILD_ABI]))"
                WORKING_DIRECTORY "${PROJECT_BINARY_DIR}" OUTPUT_VARIABLE _onebit_pybind11_abi
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
find_library(ONEBIT_TORCH_PYTHON_LIBRARY torch_python HINTS "${TORCH_INSTALL_PREFIX}/lib")

if(NOT Python3_Development.Module_FOUND OR NOT ONEBIT_PYBIND11_INCLUDE OR NOT ONEBIT_TORCH_PYTHON_LIBRARY)
  set(_onebit_py_missing "the Python module needs Python headers for ${ONEBIT_PYTHON} "
      "(${Python3_Development.Module_FOUND}), pybind11 (${ONEBIT_PYBIND11_INCLUDE}) and libtorch_python "
      "(${ONEBIT_TORCH_PYTHON_LIBRARY}); on Debian: apt-get install python3-dev pybind11-dev python3-torch")
  string(TOUPPER "${ONEBIT_WITH_TORCH}" _onebit_torch_mode)
  if(_onebit_torch_mode STREQUAL "ON")
    message(FATAL_ERROR "ONEBIT_WITH_TORCH=ON: " ${_onebit_py_missing})
  endif()
  message(WARNING "ONEBIT_WITH_TORCH=AUTO builds libtorch C++ only: " ${_onebit_py_missing})
  return()
endif()

set(ONEBIT_PYTHON_STAGE "${PROJECT_BINARY_DIR}/python")
# The module's one translation unit, compiled once for the module and for its test twin below.
add_library(onebit_python_objects OBJECT python_module.cpp)
target_include_directories(onebit_python_objects SYSTEM PRIVATE ${ONEBIT_PYBIND11_INCLUDE})
target_link_libraries(onebit_python_objects PRIVATE onebit_torch Python3::Module)
target_compile_options(onebit_python_objects PRIVATE ${ONEBIT_WARNINGS})
set_target_properties(onebit_python_objects PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_VISIBILITY_PRESET hidden)
list(LENGTH _onebit_pybind11_abi _onebit_abi_parts)
if(_onebit_abi_parts EQUAL 3)  # torch < 2.9 (pybind11 2.x) exports them; pybind11 3 no longer uses them
  list(GET _onebit_pybind11_abi 0 _compiler)
  list(GET _onebit_pybind11_abi 1 _stdlib)
  list(GET _onebit_pybind11_abi 2 _abi)
  target_compile_definitions(onebit_python_objects PRIVATE PYBIND11_COMPILER_TYPE="${_compiler}"
                             PYBIND11_STDLIB="${_stdlib}" PYBIND11_BUILD_ABI="${_abi}")
endif()

# The pure-Python files, copied beside each build of the extension.
file(GLOB ONEBIT_PY_FILES CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/python/onebit/*.py")

# onebit_python_module(TARGET STAGE [LINK_OPTIONS...]): the extension _onebit in STAGE/onebit, with
# the pure-Python files staged beside it on every build (target TARGET_files).
# Everything linked in from a static archive stays private to the module (--exclude-libs): onebit's
# own libraries, and the C++ runtime itself where the compiler links it statically (a GCC without
# libstdc++.so, devtoolset's libstdc++_nonshared.a). Exported, that runtime's functions bind at load
# time to the libstdc++.so that torch already loaded, while its inlined parts stay in the module:
# two halves of two runtimes, whose locale facets do not match, so the first number an error message
# formats crashes the interpreter (seen with torch 2.11 on the GPU machine).
function(onebit_python_module target stage)
  Python3_add_library(${target} MODULE WITH_SOABI $<TARGET_OBJECTS:onebit_python_objects>)
  target_link_libraries(${target} PRIVATE onebit_torch ${ONEBIT_TORCH_PYTHON_LIBRARY})
  target_link_options(${target} PRIVATE LINKER:--exclude-libs,ALL ${ARGN})
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME _onebit
    LIBRARY_OUTPUT_DIRECTORY "${stage}/onebit"
    INSTALL_RPATH_USE_LINK_PATH TRUE)
  add_custom_target(${target}_files ALL
    COMMAND ${CMAKE_COMMAND} -E make_directory "${stage}/onebit"
    COMMAND ${CMAKE_COMMAND} -E copy_if_different ${ONEBIT_PY_FILES} "${stage}/onebit/"
    DEPENDS ${ONEBIT_PY_FILES}
    COMMENT "Staging the onebit Python package in ${stage}")
  add_dependencies(${target} ${target}_files)
endfunction()
onebit_python_module(onebit_python "${ONEBIT_PYTHON_STAGE}")

# The test twin: the same module linked with a static C++ runtime, so this machine's tests see what
# such a toolchain builds (error messages with numbers in them, formatted by the module's own runtime).
include(CheckCXXSourceCompiles)
set(CMAKE_REQUIRED_LINK_OPTIONS -static-libstdc++)
check_cxx_source_compiles("#include <sstream>\nint main() { std::ostringstream s; s << 1; return 0; }"
                          ONEBIT_HAVE_STATIC_LIBSTDCXX)
unset(CMAKE_REQUIRED_LINK_OPTIONS)
if(ONEBIT_BUILD_TESTS AND ONEBIT_HAVE_STATIC_LIBSTDCXX)
  set(ONEBIT_PYTHON_STATIC_STAGE "${PROJECT_BINARY_DIR}/python-static-runtime")
  onebit_python_module(onebit_python_static_runtime "${ONEBIT_PYTHON_STATIC_STAGE}" -static-libstdc++)
endif()

# Where `cmake --install` puts the package: the interpreter's own site directory for local
# installs (Debian: /usr/local/lib/python3.X/dist-packages, on sys.path from any directory), kept
# relative to the install prefix when it lies below it, so that `cmake --install --prefix DIR` puts
# it below DIR. (pip installs the package its own way: setup.py.)
execute_process(COMMAND "${ONEBIT_PYTHON}" -c "import sysconfig; print(sysconfig.get_path('platlib'))"
                WORKING_DIRECTORY "${PROJECT_BINARY_DIR}" OUTPUT_VARIABLE _onebit_site OUTPUT_STRIP_TRAILING_WHITESPACE)
cmake_path(IS_PREFIX CMAKE_INSTALL_PREFIX "${_onebit_site}" NORMALIZE _onebit_site_below_prefix)
if(_onebit_site_below_prefix)
  cmake_path(RELATIVE_PATH _onebit_site BASE_DIRECTORY "${CMAKE_INSTALL_PREFIX}")
endif()
set(ONEBIT_PYTHON_INSTALL_DIR "${_onebit_site}" CACHE STRING
    "Where the onebit Python package is installed (relative: below the install prefix)")
install(TARGETS onebit_python LIBRARY DESTINATION "${ONEBIT_PYTHON_INSTALL_DIR}/onebit" COMPONENT python)
install(FILES ${ONEBIT_PY_FILES} DESTINATION "${ONEBIT_PYTHON_INSTALL_DIR}/onebit" COMPONENT python)

if(ONEBIT_BUILD_TESTS)
  # The pytest suite against a staged package (STAGE), cut into a few ctest tests so ctest -j runs
  # them side by side; each entry is "name|file|-k filter", each pytest run has its own timeout and
  # so does every wait inside it.
  function(onebit_pytests prefix stage)
    foreach(_entry IN LISTS ARGN)
      string(REPLACE "|" ";" _parts "${_entry}")
      list(GET _parts 0 _name)
      list(GET _parts 1 _file)
      list(GET _parts 2 _filter)
      set(_args -m pytest -q -p no:cacheprovider "${PROJECT_SOURCE_DIR}/python/tests/${_file}")
      if(_filter)
        list(APPEND _args -k "${_filter}")
      endif()
      add_test(NAME ${prefix}_${_name} COMMAND "${ONEBIT_PYTHON}" ${_args})
      # pytest exits 0 when every test skipped (no GPU, say): ctest reports that run as skipped.
      set_tests_properties(${prefix}_${_name} PROPERTIES ENVIRONMENT "PYTHONPATH=${stage}" TIMEOUT 900 LABELS python
                           SKIP_REGULAR_EXPRESSION "\n[0-9]+ skipped(, [0-9]+ warnings?)? in [0-9.]+s")
    endforeach()
  endfunction()
  onebit_pytests(onebit_pytest "${ONEBIT_PYTHON_STAGE}"
      "single_process|test_single_process.py|"
      "collectives|test_distributed.py|collectives or missing_rank or killed_rank or nan"
      "warmup|test_distributed.py|warmup"
      "compression|test_distributed.py|equals_the_core"
      "resume|test_distributed.py|resumes"
      "training|test_distributed.py|training"
      "conventions|test_torch_conventions.py|"
      "torchrun|test_torchrun.py|"
      "cuda|test_cuda.py|")
  if(TARGET onebit_python_static_runtime)
    # Against the static-runtime twin: the error messages, and the lost-rank watch over Gloo.
    onebit_pytests(onebit_pytest_static_runtime "${ONEBIT_PYTHON_STATIC_STAGE}"
        "errors|test_single_process.py|bad_" "lost_rank|test_distributed.py|killed_rank")
  endif()
endif()
