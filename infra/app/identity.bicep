// The user-assigned managed identity the Function app runs as. It is created before the app so role
// assignments and Key Vault access can be granted to a principal that already exists.
@description('Identity name.')
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
