// `npm run build`: the package, from the Rust crate and the TypeScript sources.
//
// 1. wasm-pack builds crate rollcall-wasm (profile wasm-release) with the wasm-bindgen CLI of
//    the exact Cargo.lock version (`--mode no-install`: a missing tool is an error, never a
//    download) into build/wasm/.
// 2. wasm-opt -Oz from npm's binaryen (Debian's binaryen breaks wasm-bindgen's output).
// 3. The module's bytes become build/wasm/bytes.js (base64), which the package embeds.
// 4. tsup bundles src/ into dist/ (see tsup.config.mjs): ESM, CommonJS, declarations, and the
//    browser build.
//
//   node scripts/build.mjs          everything
//   node scripts/build.mjs --js     only step 4 (build/wasm already made)
import {execFileSync} from "node:child_process"
import fs from "node:fs"
import path from "node:path"
import {fileURLToPath} from "node:url"

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")
const root = path.resolve(pkg, "..")
const out = path.join(pkg, "build", "wasm")
const bin = name => path.join(pkg, "node_modules", ".bin", name)

function run(cmd, args, opts = {}) {
  console.error(`[build] ${path.basename(cmd)} ${args.join(" ")}`)
  execFileSync(cmd, args, {stdio: "inherit", ...opts})
}

// The target directory cargo uses (CARGO_TARGET_DIR or a config may move it).
function targetDir() {
  const meta = execFileSync("cargo", ["metadata", "--format-version", "1", "--no-deps"], {
    cwd: root,
    encoding: "utf8",
    maxBuffer: 64 << 20,
  })
  return JSON.parse(meta).target_directory
}

function buildWasm() {
  const cache = path.join(targetDir(), "wasm-pack-cache")
  fs.mkdirSync(cache, {recursive: true})
  fs.rmSync(out, {recursive: true, force: true})
  run(
    "wasm-pack",
    [
      "build",
      "--mode",
      "no-install",
      "--no-pack",
      // the next step runs wasm-opt with the options this module needs
      "--no-opt",
      "--target",
      "web",
      "--out-dir",
      out,
      path.join(root, "wasm"),
      "--profile",
      "wasm-release",
    ],
    {cwd: root, env: {...process.env, WASM_PACK_CACHE: cache}},
  )
  const wasm = path.join(out, "rollcall_wasm_bg.wasm")
  const features = [
    "--enable-reference-types",
    "--enable-bulk-memory",
    "--enable-nontrapping-float-to-int",
    "--enable-sign-ext",
    "--enable-mutable-globals",
    "--enable-multivalue",
  ]
  run(bin("wasm-opt"), ["-Oz", "--strip-producers", "--strip-target-features", ...features, wasm, "-o", wasm])
  const bytes = fs.readFileSync(wasm)
  fs.writeFileSync(
    path.join(out, "bytes.js"),
    `// The bytes of rollcall_wasm_bg.wasm (${bytes.length}), in hexadecimal (which gzip compresses better than base64), made by scripts/build.mjs.\nexport const wasmHex = "${bytes.toString("hex")}"\n`,
  )
  fs.writeFileSync(path.join(out, "bytes.d.ts"), "export declare const wasmHex: string\n")
  console.error(`[build] build/wasm/rollcall_wasm_bg.wasm: ${bytes.length} bytes`)
}

if (!process.argv.includes("--js")) {
  buildWasm()
}
run(bin("tsup"), [], {cwd: pkg})
// the licenses live at the repository's top; the tarball carries copies
for (const file of ["LICENSE-MIT", "LICENSE-APACHE"]) {
  fs.copyFileSync(path.join(root, file), path.join(pkg, file))
}
console.error("[build] done")
