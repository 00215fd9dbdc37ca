// Bundles page.js (hydrogen-view-sdk and its dependencies) into dist/page.js with esbuild.
// olm (end-to-end encryption) is aliased to an empty module: the page runs without it.
import { build } from "esbuild";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
await build({
    absWorkingDir: here,
    entryPoints: ["page.js"],
    bundle: true,
    format: "esm",
    target: "es2020",
    outdir: "dist",
    alias: { "@matrix-org/olm/olm.js": "./empty-olm.js" },
    logLevel: "warning",
});
