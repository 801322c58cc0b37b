# Unit tests for the framing decoder; included by the top-level CMakeLists.txt
# (which is expected to call enable_testing()).
add_executable(test_framing
  ${CMAKE_SOURCE_DIR}/tests/test_framing.c
  ${CMAKE_SOURCE_DIR}/src/np_framing.c)
target_include_directories(test_framing PRIVATE ${CMAKE_SOURCE_DIR}/src)
add_test(NAME framing COMMAND test_framing)
set_tests_properties(framing PROPERTIES TIMEOUT 120)
