// Second declaration of the webhook application (same uniqueName): adds the Application ID URI, which
// must contain the appId that Entra assigns on creation. Graph Bicep upserts with PATCH semantics, so
// the properties set by entra.bicep stay as they are.
extension microsoftGraphV1

param uniqueName string
param displayName string
param identifierUri string
@description('Same tags as the first declaration (application tags are strings).')
param tags array

resource webhookApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  tags: tags
  identifierUris: [
    identifierUri
  ]
}

output identifierUri string = webhookApp.identifierUris[0]
