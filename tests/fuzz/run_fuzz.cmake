# Fuzzes one target for SECONDS seconds, or with RUNS for RUNS executions from the seeds alone with a fixed seed (the
# short run in CI: the same inputs every time, so that it fails only for a change in the code). With CLANGXX it first
# builds tests/fuzz/standalone with clang++ (libFuzzer + ASan + UBSan) in BINARY_DIR; otherwise EXECUTABLE is the
# target built by the main (clang) build. Arguments: TARGET SEEDS DICT (may be empty) BINARY_DIR, SECONDS or RUNS,
# and CLANGXX SOURCE_DIR or EXECUTABLE.
if(NOT TARGET)
  set(TARGET safetensors)
endif()
if(CLANGXX)
  execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR} -DCMAKE_CXX_COMPILER=${CLANGXX}
                          -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFUZZ_TARGET=${TARGET} COMMAND_ERROR_IS_FATAL ANY)
  execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
  set(EXECUTABLE ${BINARY_DIR}/${TARGET}_fuzz)
endif()
set(dict_arg)
if(DICT)
  set(dict_arg -dict=${DICT})
endif()
if(RUNS)
  # libFuzzer writes what it finds into the first folder: an empty one each time, the seeds as the second.
  set(corpus ${BINARY_DIR}/short_run_corpus)
  file(REMOVE_RECURSE ${corpus})
  set(length_arg -runs=${RUNS} -seed=1)
else()
  set(corpus ${BINARY_DIR}/corpus)
  set(length_arg -max_total_time=${SECONDS})
endif()
file(MAKE_DIRECTORY ${corpus})
execute_process(COMMAND ${EXECUTABLE} ${corpus} ${SEEDS} ${dict_arg} ${length_arg} -max_len=4096 -rss_limit_mb=2048
                WORKING_DIRECTORY ${BINARY_DIR} COMMAND_ERROR_IS_FATAL ANY)
