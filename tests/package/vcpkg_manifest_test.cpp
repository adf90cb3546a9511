/// @file vcpkg_manifest_test.cpp
/// @brief The vcpkg manifests (vcpkg.json, ports/sdlora/vcpkg.json) validate against vcpkg's published JSON schema
/// (tests/package/vcpkg-schema/, vcpkg-tool's docs/vcpkg.schema.json); broken manifests do not, each with an error
/// naming the field; the manifests agree with each other, with CMakeLists.txt's version and with conanfile.py.
#include <catch2/catch.hpp>

#include <fstream>    // std::ifstream
#include <regex>      // std::regex, std::sregex_iterator
#include <set>        // std::set
#include <sstream>    // std::ostringstream
#include <stdexcept>  // std::runtime_error
#include <string>     // std::string
#include <vector>     // std::vector

#include <nlohmann/json.hpp>  // nlohmann::json

#include "package/json_schema.hpp"  // JsonSchemaSet

using nlohmann::json;
using sdlora::test::JsonSchemaSet;

namespace {

std::string const kSource = SDLORA_SOURCE_DIR;
std::string const kManifestSchema = "https://raw.githubusercontent.com/microsoft/vcpkg-tool/main/docs/vcpkg.schema.json";

std::string read_text(std::string const& path) {
  std::ifstream in(kSource + "/" + path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

json read_json(std::string const& path) { return json::parse(read_text(path)); }

JsonSchemaSet const& vcpkg_schemas() {
  static JsonSchemaSet const set = [] {
    JsonSchemaSet s;
    for (char const* f : {"vcpkg.schema.json", "vcpkg-schema-definitions.schema.json", "vcpkg-configuration.schema.json"})
      s.add(read_json(std::string("tests/package/vcpkg-schema/") + f));
    return s;
  }();
  return set;
}

std::string joined(std::vector<std::string> const& errors) {
  std::string s;
  for (auto const& e : errors) s += e + "\n";
  return s;
}

/// The names of the dependencies (string or {"name": ...}) of a manifest or feature, host tools left out.
std::set<std::string> dependency_names(json const& deps) {
  std::set<std::string> names;
  for (auto const& d : deps)
    if (d.is_string())
      names.insert(d.get<std::string>());
    else if (!d.value("host", false))
      names.insert(d.at("name").get<std::string>());
  return names;
}

}  // namespace

TEST_CASE("the repository's vcpkg manifests validate against vcpkg's schema", "[package][vcpkg]") {
  for (char const* path : {"vcpkg.json", "ports/sdlora/vcpkg.json"}) {
    INFO(path);
    auto const errors = vcpkg_schemas().validate(read_json(path), kManifestSchema);
    INFO(joined(errors));
    CHECK(errors.empty());
  }
}

TEST_CASE("broken vcpkg manifests are rejected, the error naming the field", "[package][vcpkg]") {
  json const good = read_json("ports/sdlora/vcpkg.json");
  REQUIRE(vcpkg_schemas().validate(good, kManifestSchema).empty());
  struct Case {
    char const* what;
    json patch;  // RFC 7396 merge patch applied to the port's manifest
    char const* error;
  };
  std::vector<Case> const cases = {
      {"upper-case name", {{"name", "Sdlora"}}, "/name: \"Sdlora\" does not match the pattern"},
      {"reserved name", {{"name", "core"}}, "/name: \"core\" must not match #/definitions/reserved-name"},
      {"two version fields", {{"version-string", "0.1"}}, "/: matches 2 of the oneOf alternatives"},
      {"misspelt field", {{"dependecies", json::array()}}, "/dependecies: no property \"dependecies\" is allowed"},
      {"bad version", {{"version", "v0.1"}}, "/version: \"v0.1\" does not match the pattern"},
      {"negative port-version", {{"port-version", -1}}, "/port-version: -1 is less than the minimum 0"},
      {"dependencies not a list", {{"dependencies", "eigen3"}}, "/dependencies: \"eigen3\" is not of type \"array\""},
      {"dependency without a name", {{"dependencies", {{{"host", true}}}}},
       "/dependencies/0: {\"host\":true} matches none of the oneOf alternatives"},
      {"feature without a description", {{"features", {{"examples", {{"description", nullptr}}}}}},
       "/features/examples: the property \"description\" is required"},
      {"feature dependency of the wrong type", {{"features", {{"examples", {{"dependencies", {42}}}}}}},
       "/features/examples/dependencies/0: 42 matches none of the oneOf alternatives"},
      {"unknown field in a dependency", {{"dependencies", {{{"name", "zlib"}, {"version", "1"}}}}},
       "/dependencies/0/version: no property \"version\" is allowed"},
      {"license of the wrong type", {{"license", 3}}, "/license: 3 matches none of the oneOf alternatives"},
  };
  for (auto const& c : cases) {
    json broken = good;
    broken.merge_patch(c.patch);
    auto const errors = vcpkg_schemas().validate(broken, kManifestSchema);
    INFO(c.what << ":\n" << joined(errors));
    bool named = false;
    for (auto const& e : errors) named = named || e.find(c.error) != std::string::npos;
    CHECK(named);
  }
}

TEST_CASE("the schema validator refuses what it does not implement", "[package][vcpkg]") {
  JsonSchemaSet s;
  s.add(json{{"$id", "https://example.com/s.json"}, {"type", "object"}, {"propertyNames", {{"pattern", "^a"}}}});
  CHECK_THROWS_WITH(s.validate(json::object(), "https://example.com/s.json"),
                    Catch::Contains("unsupported keyword \"propertyNames\""));
  CHECK_THROWS_WITH(s.validate(json::object(), "https://example.com/other.json"),
                    Catch::Contains("no schema document"));
}

TEST_CASE("the vcpkg manifests agree with each other, CMakeLists.txt and conanfile.py", "[package][vcpkg]") {
  json const root = read_json("vcpkg.json");
  json const port = read_json("ports/sdlora/vcpkg.json");
  CHECK(root.at("version") == SDLORA_PROJECT_VERSION);
  CHECK(port.at("version") == SDLORA_PROJECT_VERSION);
  // The library's dependencies, and Boost.Program_Options for the programs only.
  std::set<std::string> const library = {"eigen3", "libjpeg-turbo", "libpng", "nlohmann-json", "stb", "zlib"};
  CHECK(dependency_names(root.at("dependencies")) == library);
  CHECK(dependency_names(port.at("dependencies")) == library);
  for (json const* m : {&root, &port})
    CHECK(dependency_names(m->at("features").at("examples").at("dependencies")) ==
          std::set<std::string>{"boost-program-options"});
  // conanfile.py requires the same packages under ConanCenter's names.
  std::string const recipe = read_text("conanfile.py");
  std::regex const requires_re(R"re(self\.requires\("([a-z_-]+)/)re");
  std::set<std::string> conan;
  for (std::sregex_iterator it(recipe.begin(), recipe.end(), requires_re), end; it != end; ++it)
    conan.insert((*it)[1].str());
  CHECK(conan == std::set<std::string>{"boost", "eigen", "libjpeg-turbo", "libpng", "nlohmann_json", "stb", "zlib"});
}
