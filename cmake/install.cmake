# `cmake --install <build> [--prefix DIR]`: the public headers, onebit's static libraries and a CMake
# package, so that a downstream project writes
#
#   find_package(onebit CONFIG REQUIRED)
#   target_link_libraries(app PRIVATE onebit::onebit)   # the optimizers, communicators, kernels
#   target_link_libraries(app PRIVATE onebit::torch)    # the libtorch optimizers (when built)
#
# (examples/cpp is such a project; scripts/check_install.sh builds it against an install.)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ONEBIT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/onebit" CACHE STRING
    "Where the CMake package (onebitConfig.cmake) is installed, relative to the prefix")

# onebit::onebit: everything below the torch bridge (the CUDA parts too in a build with CUDA). The
# target is onebit_library here, since `onebit` is the command-line tool.
add_library(onebit_library INTERFACE)
set_target_properties(onebit_library PROPERTIES EXPORT_NAME onebit)
target_link_libraries(onebit_library INTERFACE onebit_optim)
if(TARGET onebit_cuda)
  target_link_libraries(onebit_library INTERFACE onebit_cuda)
endif()

set(_onebit_install_targets onebit_library onebit_kernels onebit_comm onebit_optim)
set_target_properties(onebit_kernels PROPERTIES EXPORT_NAME kernels)
set_target_properties(onebit_comm PROPERTIES EXPORT_NAME comm)
set_target_properties(onebit_optim PROPERTIES EXPORT_NAME optim)
# onebit::cuda is an INTERFACE target over cuda_kernels, cuda_comm (with nccl) and cuda_optim. The
# private INTERFACE targets (onebit_cuda_private, onebit_cuda_comm_private, onebit_optim_private) are
# linked as $<BUILD_INTERFACE:...> and not installed.
foreach(_t onebit_cuda_kernels onebit_nccl onebit_cuda_comm onebit_cuda_optim onebit_cuda)
  if(TARGET ${_t})
    string(REPLACE "onebit_" "" _name ${_t})
    set_target_properties(${_t} PROPERTIES EXPORT_NAME ${_name})
    list(APPEND _onebit_install_targets ${_t})
  endif()
endforeach()
if(TARGET onebit_torch)
  set_target_properties(onebit_torch PROPERTIES EXPORT_NAME torch)
  list(APPEND _onebit_install_targets onebit_torch)
endif()

install(TARGETS ${_onebit_install_targets} EXPORT onebitTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT dev
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT dev
        INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/onebit" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
        COMPONENT dev FILES_MATCHING PATTERN "*.hpp")
install(EXPORT onebitTargets NAMESPACE onebit:: DESTINATION "${ONEBIT_INSTALL_CMAKEDIR}" COMPONENT dev)

# What the config must find again for the exported link interfaces (MPI::MPI_CXX, CUDA::cudart,
# libtorch's `torch` target and library paths).
set(ONEBIT_CONFIG_MPI ${ONEBIT_HAVE_MPI})
set(ONEBIT_CONFIG_CUDA ${ONEBIT_HAVE_CUDA})
set(ONEBIT_CONFIG_NCCL ${ONEBIT_HAVE_NCCL})
set(ONEBIT_CONFIG_TORCH OFF)
if(TARGET onebit_torch)
  set(ONEBIT_CONFIG_TORCH ON)
endif()
configure_package_config_file("${PROJECT_SOURCE_DIR}/cmake/onebitConfig.cmake.in"
                              "${PROJECT_BINARY_DIR}/onebitConfig.cmake"
                              INSTALL_DESTINATION "${ONEBIT_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/onebitConfigVersion.cmake"
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/onebitConfig.cmake" "${PROJECT_BINARY_DIR}/onebitConfigVersion.cmake"
        DESTINATION "${ONEBIT_INSTALL_CMAKEDIR}" COMPONENT dev)
