// Vite build of radloop's viewer. The gateway serves dist/ at /viewer/, so every asset URL is relative to that base.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/viewer/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 8000,
  },
  worker: { format: 'es' },
  optimizeDeps: {
    // The dev server must not pre-bundle the loader: its worker and WASM codecs are resolved from import.meta.url.
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: ['dicom-parser', 'pako', 'comlink'],
  },
});
