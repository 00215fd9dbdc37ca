// The whole Hydrogen app (RootViewModel: login screen, session, room list, room, composer) from
// hydrogen-view-sdk, mounted the way Hydrogen's own index.html does, without end-to-end
// encryption (no olm assets) and with Hydrogen's service worker. The homeserver field starts with the
// `hs` query parameter; drive.mjs still types it in.
import { Platform, createNavigation, createRouter, RootViewModel, FeatureSet } from "hydrogen-view-sdk";

async function main() {
    const homeserver = new URLSearchParams(location.search).get("hs") ?? "";
    const platform = new Platform({
        container: document.body,
        // Hydrogen's client needs its service worker (it hands the access token to it for
        // authenticated media) even without encryption.
        assetPaths: { downloadSandbox: "/assets/download-sandbox.html", worker: "/assets/main.js", serviceWorker: "/sw.js" },
        config: { defaultHomeServer: homeserver },
        options: { development: false },
    });
    await platform.init();
    const navigation = createNavigation();
    platform.setNavigation(navigation);
    const urlRouter = createRouter({ navigation, history: platform.history });
    urlRouter.attach();
    const features = await FeatureSet.load(platform.settingsStorage);
    const vm = new RootViewModel({ platform, urlRouter, navigation, features });
    await vm.load();
    platform.createAndMountRootView(vm);
    window.hydrogenMounted = true;
}

main().catch((error) => {
    window.hydrogenError = String(error?.stack ?? error);
    console.error("hydrogen page failed:", error);
});
