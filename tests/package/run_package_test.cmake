# Installs sdlora into a scratch prefix, then configures and builds tests/package/ against it with
# find_package(sdlora CONFIG REQUIRED), and runs the result.
file(REMOVE_RECURSE ${BINARY_DIR})
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR}/build -DSDLORA_BUILD_TESTS=OFF
                        -DSDLORA_BUILD_EXAMPLES=OFF -DSDLORA_BUILD_BENCHMARKS=OFF
                        -DCMAKE_INSTALL_PREFIX=${BINARY_DIR}/prefix COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BINARY_DIR}/build COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR}/tests/package -B ${BINARY_DIR}/consumer
                        -DCMAKE_PREFIX_PATH=${BINARY_DIR}/prefix COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR}/consumer COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${BINARY_DIR}/consumer/consumer COMMAND_ERROR_IS_FATAL ANY)
