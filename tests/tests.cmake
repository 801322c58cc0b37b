# The C tests, all on tests/harness.h; included by the top-level CMakeLists.txt
# (which is expected to call enable_testing()). Unit tests for the framing decoder:
add_executable(test_framing
  ${CMAKE_SOURCE_DIR}/tests/test_framing.c
  ${CMAKE_SOURCE_DIR}/src/np_framing.c)
target_include_directories(test_framing PRIVATE ${CMAKE_SOURCE_DIR}/src)
add_test(NAME framing COMMAND test_framing)
set_tests_properties(framing PROPERTIES TIMEOUT 120)

# Engine tests: a server and a client on one loop, no Lua.
add_executable(test_engine ${CMAKE_SOURCE_DIR}/tests/test_engine.c)
target_link_libraries(test_engine PRIVATE npipe_engine)
add_test(NAME engine COMMAND test_engine)
set_tests_properties(engine PROPERTIES TIMEOUT 60)

# SIGPIPE and a host's own handler (Unix: Windows has no SIGPIPE); the socket file's
# mode without the umask (Unix: Windows has no socket files).
if(NOT WIN32)
  add_executable(test_sigpipe ${CMAKE_SOURCE_DIR}/tests/test_sigpipe.c)
  target_link_libraries(test_sigpipe PRIVATE npipe_engine)
  add_test(NAME sigpipe COMMAND test_sigpipe)
  set_tests_properties(sigpipe PROPERTIES TIMEOUT 30)
  add_executable(test_bind ${CMAKE_SOURCE_DIR}/tests/test_bind.c)
  target_link_libraries(test_bind PRIVATE npipe_engine)
  add_test(NAME bind COMMAND test_bind)
  set_tests_properties(bind PROPERTIES TIMEOUT 30)
endif()
