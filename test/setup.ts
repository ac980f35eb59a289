// Node 20 lacks Promise.withResolvers, which aws-local-stepfunctions calls: the same polyfill the local runner loads.
import '../scripts/local/polyfill';
