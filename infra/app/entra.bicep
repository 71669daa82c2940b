// The Entra ID application the action group's secure webhook gets its tokens for (Microsoft Graph
// Bicep extension, infra/bicepconfig.json). Mirrors Microsoft's "secure webhook" PowerShell script:
//   - an application with the "ActionGroupsSecureWebhook" app role (allowed member type Application)
//     that asks for v2.0 access tokens;
//   - its service principal, with app role assignment required, so only assigned callers get tokens;
//   - the service principal of Azure Monitor's action groups app (created when the tenant lacks it);
//   - the app role assigned to that service principal, so its tokens carry roles=[ActionGroupsSecureWebhook].
// The deploying principal becomes an owner: an action group may reference the app only when the
// principal that creates or changes the action group owns it (AadWebhookResourceNotOwnedByCaller).
extension microsoftGraphV1

@description('Client-provided key of the application; the same value updates the same app on redeploys.')
param uniqueName string
param displayName string
param environmentName string
@description('Value of the app role Azure Monitor is assigned (AUTH_REQUIRED_ROLE).')
param roleValue string
@description('Application id of Azure Monitor action groups ("AzNS AAD Webhook").')
param azureMonitorAppId string
@description('Further owners (object ids) besides the deploying principal.')
param additionalOwnerIds array = []

var appTags = [
  'azd-env-name:${environmentName}'
]

// Stable across redeploys: the role id must not change once it is assigned.
var roleId = guid(tenant().tenantId, uniqueName, roleValue)

resource webhookApp 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  description: 'Azure Monitor action group secure webhook target (ITSM bridge, azd environment ${environmentName}).'
  signInAudience: 'AzureADMyOrg'
  tags: appTags
  api: {
    requestedAccessTokenVersion: 2
  }
  appRoles: [
    {
      id: roleId
      value: roleValue
      displayName: roleValue
      description: 'Lets an Azure Monitor action group call the bridge through a secure webhook.'
      allowedMemberTypes: [
        'Application'
      ]
      isEnabled: true
    }
  ]
  owners: {
    relationships: union([deployer().objectId], additionalOwnerIds)
  }
}

resource webhookSp 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: webhookApp.appId
  appRoleAssignmentRequired: true
  tags: appTags
}

// Upsert keyed by appId: creates Azure Monitor's service principal when the tenant has none yet and
// leaves an existing one as it is.
resource azureMonitorSp 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: azureMonitorAppId
}

resource azureMonitorRoleAssignment 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  appRoleId: roleId
  principalId: azureMonitorSp.id
  resourceId: webhookSp.id
}

// The Application ID URI can only name the appId once Entra has assigned it, so it is set by a
// second declaration of the same application (api://<appId> satisfies every identifierUris policy).
module identifierUri 'entra-identifier.bicep' = {
  name: 'entra-identifier'
  params: {
    uniqueName: webhookApp.uniqueName
    displayName: displayName
    identifierUri: 'api://${webhookApp.appId}'
    tags: appTags
  }
}

output appId string = webhookApp.appId
output objectId string = webhookApp.id
output servicePrincipalId string = webhookSp.id
output identifierUri string = identifierUri.outputs.identifierUri
output roleId string = roleId
