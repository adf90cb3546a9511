# vcpkg port of sdlora, as an overlay port of this repository (its source is the checkout the port sits in):
#   vcpkg install sdlora --overlay-ports=<repo>/ports                 # the headers, CMake package and CLIP vocabulary
#   vcpkg install "sdlora[examples]" --overlay-ports=<repo>/ports     # and the programs, in tools/sdlora
# A consumer calls find_package(sdlora CONFIG REQUIRED) and links sdlora::sdlora. For a registry, replace SOURCE_PATH
# by vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO ... REF ... SHA512 ...).
# tests/package/vcpkg_portfile_dry_run.cmake (ctest: package_vcpkg_portfile) runs this file with stand-ins for the
# vcpkg_* functions.
get_filename_component(SOURCE_PATH "${CURRENT_PORT_DIR}/../.." ABSOLUTE)

# The library is headers only: one (release) configuration. With [examples] the programs are built too.
set(VCPKG_BUILD_TYPE release)
vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    examples SDLORA_BUILD_EXAMPLES)

# The CMake files go straight to share/sdlora, where vcpkg wants them; the fixup then has nothing to move.
vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    ${FEATURE_OPTIONS}
    -DSDLORA_BUILD_TESTS=OFF
    -DSDLORA_BUILD_BENCHMARKS=OFF
    -DSDLORA_BUILD_DOCS=OFF
    -DSDLORA_CUDA=OFF
    -DSDLORA_INSTALL_CMAKEDIR=share/sdlora)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME sdlora CONFIG_PATH share/sdlora)

if("examples" IN_LIST FEATURES)
  # Every program examples/CMakeLists.txt installs (bin/sdlora-*) moves to tools/sdlora.
  file(GLOB programs RELATIVE "${CURRENT_PACKAGES_DIR}/bin" "${CURRENT_PACKAGES_DIR}/bin/sdlora-*")
  if(VCPKG_TARGET_EXECUTABLE_SUFFIX)
    list(TRANSFORM programs REPLACE "\\${VCPKG_TARGET_EXECUTABLE_SUFFIX}$" "")
  endif()
  vcpkg_copy_tools(TOOL_NAMES ${programs} AUTO_CLEAN)
endif()

# The library's license, then the CLIP vocabulary's (data/, installed to share/sdlora).
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE" "${SOURCE_PATH}/data/LICENSE.bpe_simple_vocab")
file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
