// The package build (after scripts/build.mjs made build/wasm):
// - dist/index.js, dist/index.cjs and their declarations: one file each, Presence's
//   WebAssembly module embedded and compiled on first use (loader-sync.ts). Node, test runners
//   and CommonJS consumers get these.
// - dist/browser.js (the `browser` condition): the client, importing dist/browser-presence.js,
//   which loads dist/browser-wasm.js (the module and its glue) in the background
//   (loader-async.ts). Bundlers keep the three as separate chunks.
import path from "node:path"
import {defineConfig} from "tsup"

/** Resolves `#loader` (see src/presence.ts) to the given loader. */
const loader = (file) => ({
  name: "rollcall-loader",
  setup(build){
    build.onResolve({filter: /^#loader$/}, () => ({path: path.resolve("src", file)}))
  },
})

const common = {
  target: "es2020",
  platform: "neutral",
  outDir: "dist",
  treeshake: true,
  splitting: false,
  sourcemap: false,
  minify: false,
}

export default defineConfig([
  {
    ...common,
    entry: {index: "src/index.ts"},
    format: ["esm", "cjs"],
    dts: true,
    clean: true,
    esbuildPlugins: [loader("loader-sync.ts")],
    outExtension: ({format}) => ({js: format === "cjs" ? ".cjs" : ".js"}),
  },
  {
    ...common,
    entry: {"browser": "src/browser.ts", "browser-presence": "src/browser-presence.ts", "browser-wasm": "src/browser-wasm.ts"},
    format: ["esm"],
    dts: false,
    external: ["./browser-presence.js", "./browser-wasm.js"],
    esbuildPlugins: [loader("loader-async.ts")],
    outExtension: () => ({js: ".js"}),
  },
])
