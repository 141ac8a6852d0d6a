/**
 * radloop's OHIF configuration (docs/interop.md). Copied over the published build's app-config.js by
 * scripts/fetch_ohif.py; the gateway serves the build at /ohif on the same origin as /dicomweb.
 *
 * - One data source: radloop's DICOMweb at /dicomweb (QIDO-RS, WADO-RS), same origin, so no CORS.
 * - Frames are asked for as HTJ2K (image/jphc, HTJ2K Lossless RPCL 1.2.840.10008.1.2.4.202), the codestreams the
 *   archive stores, so the gateway sends them without transcoding.
 * - The bearer token: OHIF reads ?token= on its viewer route, sends it as "Authorization: Bearer" on every
 *   DICOMweb request and removes it from the address bar. The built-in viewer keeps its token for the tab in
 *   sessionStorage ("radloop.token"); when OHIF is opened without ?token=, the same token is put back into the
 *   address (history.replaceState: no request carries it in a URL) before OHIF starts, so both send the same one.
 */
(function shareTheViewerToken() {
  try {
    var params = new URLSearchParams(window.location.search);
    var fromQuery = params.get('token');
    if (fromQuery) {
      window.sessionStorage.setItem('radloop.token', fromQuery);
      return;
    }
    var kept = window.sessionStorage.getItem('radloop.token');
    if (kept) {
      params.set('token', kept);
      window.history.replaceState(null, '', window.location.pathname + '?' + params.toString() + window.location.hash);
    }
  } catch (e) {
    /* no sessionStorage (private mode): OHIF then needs ?token= */
  }
})();

window.config = {
  name: 'radloop',
  routerBasename: '/ohif',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'radloop',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'radloop',
      configuration: {
        friendlyName: 'radloop',
        name: 'radloop',
        wadoUriRoot: '/dicomweb',
        qidoRoot: '/dicomweb',
        wadoRoot: '/dicomweb',
        qidoSupportsIncludeField: true,
        supportsReject: false,
        supportsStow: false,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: true,
        supportsWildcard: true,
        omitQuotationForMultipartRequest: true,
        // generateAcceptHeader knows no HTJ2K transfer syntax, so the Accept header is given in full.
        acceptHeader: ['multipart/related; type=image/jphc; transfer-syntax=1.2.840.10008.1.2.4.202'],
        bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      },
    },
  ],
};
