/** Tests reach the local AWS endpoint through the same module the local runner uses. */
export * from '../../scripts/local/moto';
