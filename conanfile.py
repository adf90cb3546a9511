"""Conan 2 recipe of sdlora: the headers, their CMake package (sdloraConfig.cmake) and the CLIP vocabulary.

    conan create . -pr:h conan/profiles/debian -pr:b conan/profiles/debian     # offline, Debian's packages
    conan create . --build=missing                                            # with ConanCenter

A consumer calls find_package(sdlora CONFIG REQUIRED) and links sdlora::sdlora. CMakeDeps writes nothing for sdlora
(cmake_find_mode none): the package's own sdloraConfig.cmake is used, whose find_dependency calls find Eigen3,
nlohmann_json, ZLIB, JPEG and PNG through CMakeDeps' files (ConanCenter packages) or on the system (the packages a
profile lists under [platform_requires], for which CMakeDeps writes nothing either), and stb's include directory with
find_path.
The test tests/package/conan_create.sh (ctest: package_conan_create) runs the first command.
"""
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.cmake import CMake, CMakeDeps, CMakeToolchain, cmake_layout
from conan.tools.files import copy, load

required_conan_version = ">=2.0"


class SdloraConan(ConanFile):
    name = "sdlora"
    description = ("Stable Diffusion in header-only C++20: load checkpoints, generate images, train LoRA, "
                   "DreamBooth and Textual Inversion on the CPU or CUDA")
    license = "MIT"
    topics = ("stable-diffusion", "lora", "diffusion", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    # examples: also build and package the command-line programs (sdlora-generate, sdlora-train, ...) in bin/.
    options = {"examples": [True, False]}
    default_options = {"examples": False}
    # What CMakeLists.txt reads when tests and benchmarks are off (src/: the optional compiled instances).
    exports_sources = ("CMakeLists.txt", "LICENSE", "cmake/*", "include/*", "src/*", "data/*", "examples/*")
    no_copy_source = True

    def set_version(self):
        # The version of CMakeLists.txt's project() call: one place to change it.
        text = load(self, os.path.join(self.recipe_folder, "CMakeLists.txt"))
        self.version = re.search(r"project\(sdlora\s+VERSION\s+([0-9.]+)", text).group(1)

    def requirements(self):
        # Ranges that hold Debian 12's packages (conan/profiles/debian) and ConanCenter's current ones.
        self.requires("eigen/[>=3.4 <4]")
        # JPEG and PNG are decoded by libjpeg-turbo and libpng (docs/security.md, "Image decoders"); CMake finds them
        # with find_package(JPEG) / find_package(PNG), and without them the build falls back to stb.
        self.requires("libjpeg-turbo/[>=2.1 <4]")
        self.requires("libpng/[>=1.6 <2]")
        self.requires("nlohmann_json/[>=3.11 <4]")
        self.requires("stb/[>=cci.20220908]")
        self.requires("zlib/[>=1.2.11 <2]")  # the CLIP tokenizer reads the gzip'd vocabulary
        if self.options.examples:
            # Only the programs use it, and they are built here: consumers of the headers never see it.
            self.requires("boost/[>=1.74 <2]", visible=False)

    def validate(self):
        check_min_cppstd(self, 20)

    def package_id(self):
        # Headers, CMake files and data are the same for every configuration; the programs are not.
        if not self.info.options.examples:
            self.info.clear()

    def layout(self):
        cmake_layout(self)

    def generate(self):
        tc = CMakeToolchain(self)
        tc.cache_variables["SDLORA_BUILD_TESTS"] = False
        tc.cache_variables["SDLORA_BUILD_BENCHMARKS"] = False
        tc.cache_variables["SDLORA_BUILD_DOCS"] = False
        tc.cache_variables["SDLORA_CUDA"] = False
        tc.cache_variables["SDLORA_BUILD_EXAMPLES"] = bool(self.options.examples)
        tc.generate()
        CMakeDeps(self).generate()  # Eigen3Config.cmake etc. for ConanCenter packages; nothing for platform ones

    def build(self):
        cmake = CMake(self)
        cmake.configure()
        cmake.build()

    def package(self):
        copy(self, "LICENSE", self.source_folder, os.path.join(self.package_folder, "licenses"))
        copy(self, "LICENSE.bpe_simple_vocab", os.path.join(self.source_folder, "data"),
             os.path.join(self.package_folder, "licenses"))
        CMake(self).install()

    def package_info(self):
        # Our own sdloraConfig.cmake (lib/cmake/sdlora) is the CMake interface: CMakeToolchain puts builddirs on
        # CMAKE_PREFIX_PATH.
        self.cpp_info.set_property("cmake_find_mode", "none")
        self.cpp_info.builddirs = [os.path.join("lib", "cmake", "sdlora")]
        self.cpp_info.bindirs = ["bin"] if self.options.examples else []
        self.cpp_info.libdirs = []
        self.cpp_info.defines = ['SDLORA_BUNDLED_DATA_DIR="{}"'.format(
            os.path.join(self.package_folder, "share", "sdlora").replace("\\", "/"))]
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
