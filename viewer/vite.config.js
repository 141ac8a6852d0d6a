// Vite build of radloop's viewer. The gateway serves dist/ at /viewer/, so every asset URL is relative to that base.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/viewer/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
    // Two pages: the study viewer (/viewer/) and the radiologist's workstation (/viewer/worklist/).
    rollupOptions: {
      input: {
        main: fileURLToPath(new URL('./index.html', import.meta.url)),
        worklist: fileURLToPath(new URL('./worklist/index.html', import.meta.url)),
      },
    },
  },
  worker: { format: 'es' },
  optimizeDeps: {
    // The dev server must not pre-bundle the loader: its worker and WASM codecs are resolved from import.meta.url.
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser', 'pako', 'comlink'],
  },
});
