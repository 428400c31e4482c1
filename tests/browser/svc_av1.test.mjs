// The SVC test with AV1: the SFU finds its temporal layers in the Dependency Descriptor header
// extension (the payload stays opaque, as it would be end-to-end encrypted).
process.env.MOIEN_SVC_CODEC = 'av1';
await import('./svc.test.mjs');
