// Key Vault holding the ITSM credentials: ServiceNow password / OAuth client secret, Jira API token
// (Cloud) / personal access token (Data Center). RBAC authorization (no access policies), soft delete
// and purge protection. A secret whose parameter is empty is not created, so basic-only, OAuth-only,
// Jira Cloud and Jira Data Center deployments all work (and a deployment stores only its own ITSM's).
// Outputs carry secret URIs only (deterministic, versionless so the app always reads the latest
// version), never a value.
@minLength(3)
@maxLength(24)
param name string
param location string
param tags object

@secure()
@description('ServiceNow basic auth password; empty: not stored.')
param servicenowPassword string

@secure()
@description('ServiceNow OAuth client secret; empty: not stored.')
param servicenowClientSecret string

@secure()
@description('Jira Cloud API token; empty: not stored.')
param jiraApiToken string

@secure()
@description('Jira Data Center personal access token; empty: not stored.')
param jiraPat string

@minValue(7)
@maxValue(90)
@description('Soft-delete retention. Purge protection keeps a deleted vault (and its name) for this many days.')
param softDeleteRetentionInDays int = 7

var passwordSecretName = 'servicenow-password'
var clientSecretSecretName = 'servicenow-client-secret'
var jiraApiTokenSecretName = 'jira-api-token'
var jiraPatSecretName = 'jira-pat'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: Firewall default Allow: Key Vault references of a Flex app without VNet integration use the public endpoint; access is RBAC-only.
  // checkov:skip=CKV_AZURE_189: Same as CKV_AZURE_109: public network access is needed without VNet integration; no access policies, RBAC-only.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenant().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource passwordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(servicenowPassword)) {
  // checkov:skip=CKV_AZURE_41: The credential's lifetime is owned by ServiceNow; an expiry here would silently break delivery. Rotation: infra/README.md.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov 3.x misreads properties of conditional (if ...) resources.
  parent: vault
  name: passwordSecretName
  tags: tags
  properties: {
    value: servicenowPassword
    contentType: 'text/plain'
  }
}

resource clientSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(servicenowClientSecret)) {
  // checkov:skip=CKV_AZURE_41: The credential's lifetime is owned by ServiceNow; an expiry here would silently break delivery. Rotation: infra/README.md.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov 3.x misreads properties of conditional (if ...) resources.
  parent: vault
  name: clientSecretSecretName
  tags: tags
  properties: {
    value: servicenowClientSecret
    contentType: 'text/plain'
  }
}

resource jiraApiTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(jiraApiToken)) {
  // checkov:skip=CKV_AZURE_41: The token's lifetime is owned by Atlassian (its expiry is set there); an expiry here would silently break delivery. Rotation: infra/README.md.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov 3.x misreads properties of conditional (if ...) resources.
  parent: vault
  name: jiraApiTokenSecretName
  tags: tags
  properties: {
    value: jiraApiToken
    contentType: 'text/plain'
  }
}

resource jiraPatSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(jiraPat)) {
  // checkov:skip=CKV_AZURE_41: The token's lifetime is owned by Jira Data Center (its expiry is set there); an expiry here would silently break delivery. Rotation: infra/README.md.
  // checkov:skip=CKV_AZURE_114: contentType is set below; checkov 3.x misreads properties of conditional (if ...) resources.
  parent: vault
  name: jiraPatSecretName
  tags: tags
  properties: {
    value: jiraPat
    contentType: 'text/plain'
  }
}

output id string = vault.id
output name string = vault.name
output vaultUri string = vault.properties.vaultUri
// URIs without a version: Key Vault references then follow rotations (picked up within a day or on restart).
output basicAuthCredentialUri string = '${vault.properties.vaultUri}secrets/${passwordSecretName}'
output oauthCredentialUri string = '${vault.properties.vaultUri}secrets/${clientSecretSecretName}'
output jiraApiTokenCredentialUri string = '${vault.properties.vaultUri}secrets/${jiraApiTokenSecretName}'
output jiraPatCredentialUri string = '${vault.properties.vaultUri}secrets/${jiraPatSecretName}'
