# onebit_core_test(NAME SOURCES... LIBS...): a GoogleTest executable of the core, its tests listed
# for ctest under the label `core` (the suites scripts/test.sh runs again under the sanitizers).
include(GoogleTest)
function(onebit_core_test name)
  cmake_parse_arguments(T "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${T_SOURCES})
  target_link_libraries(${name} PRIVATE ${T_LIBS} GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${ONEBIT_WARNINGS})
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS core)
endfunction()
