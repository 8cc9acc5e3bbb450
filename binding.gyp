{
  "targets": [
    {
      "target_name": "thinio",
      "sources": ["native/thinio.c"],
      "cflags": ["-O2", "-Wall", "-Wextra"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
