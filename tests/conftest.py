pytest_plugins = ["tests.servers.fixtures", "tests.servers.http_fixtures", "tests.servers.mounts",
                  "tests.servers.faultproxy"]
